"""How a message leaves Sluice: the transport contract and one module or package per kind of peer
(webhook, email, SMPP).
"""
