"""SMPP v3.4 numbers: command ids, command statuses, TLV tags and the bit fields of a message.

Values and names follow the SMPP v3.4 specification (Issue 1.2, 12-Oct-1999): command ids from
section 5.1.2.1, command statuses from 5.1.3, TLV tags from 5.3.2, message states from 5.2.28,
esm_class from 5.2.12, registered_delivery from 5.2.17, data_coding from 5.2.19, TON/NPI from
5.2.5/5.2.6.

Names are the specification's own, so they can be searched in its text: command ids and TLV tags
are lower case there (``CommandId.submit_sm``, ``Tag.sar_msg_ref_num``), command statuses and
message states upper case (``CommandStatus.ESME_RTHROTTLED``, ``MessageState.DELIVERED``).

Examples:
    >>> describe(0x58)
    'ESME_RTHROTTLED (0x58): throttling error (the ESME exceeded its allowed message rate)'
    >>> describe(0x400)
    'unknown status 0x400 (vendor-specific range)'
    >>> is_permanent(CommandStatus.ESME_RINVDSTADR), is_permanent(CommandStatus.ESME_RTHROTTLED)
    (True, False)
"""

from __future__ import annotations

import enum

#: Set in the command_id of every response PDU.
RESPONSE_BIT = 0x80000000


class CommandId(enum.IntEnum):
    """command_id of every SMPP v3.4 PDU; a response is its request's id | 0x80000000."""

    generic_nack = 0x80000000
    bind_receiver = 0x00000001
    bind_receiver_resp = 0x80000001
    bind_transmitter = 0x00000002
    bind_transmitter_resp = 0x80000002
    query_sm = 0x00000003
    query_sm_resp = 0x80000003
    submit_sm = 0x00000004
    submit_sm_resp = 0x80000004
    deliver_sm = 0x00000005
    deliver_sm_resp = 0x80000005
    unbind = 0x00000006
    unbind_resp = 0x80000006
    replace_sm = 0x00000007
    replace_sm_resp = 0x80000007
    cancel_sm = 0x00000008
    cancel_sm_resp = 0x80000008
    bind_transceiver = 0x00000009
    bind_transceiver_resp = 0x80000009
    outbind = 0x0000000B
    enquire_link = 0x00000015
    enquire_link_resp = 0x80000015
    submit_multi = 0x00000021
    submit_multi_resp = 0x80000021
    alert_notification = 0x00000102
    data_sm = 0x00000103
    data_sm_resp = 0x80000103


class CommandStatus(enum.IntEnum):
    """command_status values of SMPP v3.4 (section 5.1.3). 0x400-0x4FF are vendor-specific."""

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RCANCELFAIL = 0x11
    ESME_RREPLACEFAIL = 0x13
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVNUMDESTS = 0x33
    ESME_RINVDLNAME = 0x34
    ESME_RINVDESTFLAG = 0x40
    ESME_RINVSUBREP = 0x42
    ESME_RINVESMCLASS = 0x43
    ESME_RCNTSUBDL = 0x44
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVSYSTYP = 0x53
    ESME_RINVREPFLAG = 0x54
    ESME_RINVNUMMSGS = 0x55
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RINVDFTMSGID = 0x63
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RQUERYFAIL = 0x67
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_ROPTPARNOTALLWD = 0xC1
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RINVOPTPARAMVAL = 0xC4
    ESME_RDELIVERYFAILURE = 0xFE
    ESME_RUNKNOWNERR = 0xFF


_DESCRIPTIONS: dict[int, str] = {
    CommandStatus.ESME_ROK: "no error",
    CommandStatus.ESME_RINVMSGLEN: "message length is invalid",
    CommandStatus.ESME_RINVCMDLEN: "command length is invalid",
    CommandStatus.ESME_RINVCMDID: "invalid command id",
    CommandStatus.ESME_RINVBNDSTS: "incorrect bind status for the given command",
    CommandStatus.ESME_RALYBND: "ESME already in bound state",
    CommandStatus.ESME_RINVPRTFLG: "invalid priority flag",
    CommandStatus.ESME_RINVREGDLVFLG: "invalid registered delivery flag",
    CommandStatus.ESME_RSYSERR: "system error",
    CommandStatus.ESME_RINVSRCADR: "invalid source address",
    CommandStatus.ESME_RINVDSTADR: "invalid destination address",
    CommandStatus.ESME_RINVMSGID: "message id is invalid",
    CommandStatus.ESME_RBINDFAIL: "bind failed",
    CommandStatus.ESME_RINVPASWD: "invalid password",
    CommandStatus.ESME_RINVSYSID: "invalid system id",
    CommandStatus.ESME_RCANCELFAIL: "cancel_sm failed",
    CommandStatus.ESME_RREPLACEFAIL: "replace_sm failed",
    CommandStatus.ESME_RMSGQFUL: "message queue full",
    CommandStatus.ESME_RINVSERTYP: "invalid service type",
    CommandStatus.ESME_RINVNUMDESTS: "invalid number of destinations",
    CommandStatus.ESME_RINVDLNAME: "invalid distribution list name",
    CommandStatus.ESME_RINVDESTFLAG: "destination flag is invalid (submit_multi)",
    CommandStatus.ESME_RINVSUBREP: "invalid submit-with-replace request (replace_if_present_flag)",
    CommandStatus.ESME_RINVESMCLASS: "invalid esm_class field data",
    CommandStatus.ESME_RCNTSUBDL: "cannot submit to distribution list",
    CommandStatus.ESME_RSUBMITFAIL: "submit_sm or submit_multi failed",
    CommandStatus.ESME_RINVSRCTON: "invalid source address TON",
    CommandStatus.ESME_RINVSRCNPI: "invalid source address NPI",
    CommandStatus.ESME_RINVDSTTON: "invalid destination address TON",
    CommandStatus.ESME_RINVDSTNPI: "invalid destination address NPI",
    CommandStatus.ESME_RINVSYSTYP: "invalid system_type field",
    CommandStatus.ESME_RINVREPFLAG: "invalid replace_if_present flag",
    CommandStatus.ESME_RINVNUMMSGS: "invalid number of messages",
    CommandStatus.ESME_RTHROTTLED: "throttling error (the ESME exceeded its allowed message rate)",
    CommandStatus.ESME_RINVSCHED: "invalid scheduled delivery time",
    CommandStatus.ESME_RINVEXPIRY: "invalid message validity period (expiry time)",
    CommandStatus.ESME_RINVDFTMSGID: "predefined message invalid or not found",
    CommandStatus.ESME_RX_T_APPN: "ESME receiver temporary application error",
    CommandStatus.ESME_RX_P_APPN: "ESME receiver permanent application error",
    CommandStatus.ESME_RX_R_APPN: "ESME receiver reject message error",
    CommandStatus.ESME_RQUERYFAIL: "query_sm request failed",
    CommandStatus.ESME_RINVOPTPARSTREAM: "error in the optional part of the PDU body",
    CommandStatus.ESME_ROPTPARNOTALLWD: "optional parameter not allowed",
    CommandStatus.ESME_RINVPARLEN: "invalid parameter length",
    CommandStatus.ESME_RMISSINGOPTPARAM: "expected optional parameter missing",
    CommandStatus.ESME_RINVOPTPARAMVAL: "invalid optional parameter value",
    CommandStatus.ESME_RDELIVERYFAILURE: "delivery failure (data_sm_resp)",
    CommandStatus.ESME_RUNKNOWNERR: "unknown error",
}

_VENDOR_STATUSES = range(0x400, 0x500)


def describe(status: int) -> str:
    """Name, hex value and meaning of a command_status, for logs and error messages."""
    text = _DESCRIPTIONS.get(status)
    if text is None:
        if status in _VENDOR_STATUSES:
            return f"unknown status 0x{status:X} (vendor-specific range)"
        return f"unknown status 0x{status:X}"
    return f"{CommandStatus(status).name} (0x{status:X}): {text}"


# Which rejections of a submit are worth retrying. The question a status answers is "would the
# same PDU succeed later, or over another bind?":
# - Throttling and a full queue say "not now": retry after slowing down.
# - RSYSERR, RSUBMITFAIL, RX_T_APPN, RDELIVERYFAILURE, RUNKNOWNERR and RBINDFAIL report a failure
#   on the SMSC's side (or in the network behind it) that says nothing wrong about the message
#   itself; SMSCs return them during overloads and failovers, so they are retried.
# - RINVBNDSTS says the bind was in the wrong state (e.g. a receiver-only bind): another bind may
#   take the same PDU, so it is transient too.
# - Everything else names something wrong in the PDU (an address, a TON/NPI, a parameter, a
#   length, a flag) or a permanent refusal (RX_P_APPN, RX_R_APPN): sending the same bytes again
#   gets the same answer, so it is permanent.
# - A status this table does not know (vendor-specific 0x400-0x4FF and anything else) counts as
#   transient: a retry is bounded by the retry policy and the message's expiry, while wrongly
#   calling it permanent would drop a message for good.

#: Statuses that ask the sender to slow down; the channel lowers its rate on these.
THROTTLING_STATUSES: frozenset[int] = frozenset(
    {CommandStatus.ESME_RTHROTTLED, CommandStatus.ESME_RMSGQFUL}
)

#: Statuses after which the same PDU may succeed later (see the reasoning above).
TRANSIENT_STATUSES: frozenset[int] = THROTTLING_STATUSES | {
    CommandStatus.ESME_RSYSERR,
    CommandStatus.ESME_RSUBMITFAIL,
    CommandStatus.ESME_RX_T_APPN,
    CommandStatus.ESME_RDELIVERYFAILURE,
    CommandStatus.ESME_RUNKNOWNERR,
    CommandStatus.ESME_RBINDFAIL,
    CommandStatus.ESME_RINVBNDSTS,
}


def is_permanent(status: int) -> bool:
    """True when resending the same PDU cannot succeed; ``ESME_ROK`` is not a failure at all."""
    return (
        status != CommandStatus.ESME_ROK
        and status in _DESCRIPTIONS
        and (status not in TRANSIENT_STATUSES)
    )


def is_known_status(status: int) -> bool:
    """True for a command_status SMPP v3.4 defines (vendor-specific ones are not)."""
    return status in _DESCRIPTIONS


def is_transient(status: int) -> bool:
    """True when the same PDU may succeed later (unknown statuses included, see above)."""
    return status != CommandStatus.ESME_ROK and not is_permanent(status)


class Tag(enum.IntEnum):
    """Tags of the optional parameters (TLVs) of SMPP v3.4, section 5.3.2."""

    dest_addr_subunit = 0x0005
    dest_network_type = 0x0006
    dest_bearer_type = 0x0007
    dest_telematics_id = 0x0008
    source_addr_subunit = 0x000D
    source_network_type = 0x000E
    source_bearer_type = 0x000F
    source_telematics_id = 0x0010
    qos_time_to_live = 0x0017
    payload_type = 0x0019
    additional_status_info_text = 0x001D
    receipted_message_id = 0x001E
    ms_msg_wait_facilities = 0x0030
    privacy_indicator = 0x0201
    source_subaddress = 0x0202
    dest_subaddress = 0x0203
    user_message_reference = 0x0204
    user_response_code = 0x0205
    source_port = 0x020A
    destination_port = 0x020B
    sar_msg_ref_num = 0x020C
    language_indicator = 0x020D
    sar_total_segments = 0x020E
    sar_segment_seqnum = 0x020F
    sc_interface_version = 0x0210
    callback_num_pres_ind = 0x0302
    callback_num_atag = 0x0303
    number_of_messages = 0x0304
    callback_num = 0x0381
    dpf_result = 0x0420
    set_dpf = 0x0421
    ms_availability_status = 0x0422
    network_error_code = 0x0423
    message_payload = 0x0424
    delivery_failure_reason = 0x0425
    more_messages_to_send = 0x0426
    message_state = 0x0427
    ussd_service_op = 0x0501
    display_time = 0x1201
    sms_signal = 0x1203
    ms_validity = 0x1204
    alert_on_message_delivery = 0x130C
    its_reply_type = 0x1380
    its_session_info = 0x1383


class MessageState(enum.IntEnum):
    """message_state of query_sm_resp and of the message_state TLV (section 5.2.28)."""

    ENROUTE = 1
    DELIVERED = 2
    EXPIRED = 3
    DELETED = 4
    UNDELIVERABLE = 5
    ACCEPTED = 6
    UNKNOWN = 7
    REJECTED = 8


class Ton(enum.IntEnum):
    """Type of number of an address (section 5.2.5)."""

    UNKNOWN = 0
    INTERNATIONAL = 1
    NATIONAL = 2
    NETWORK_SPECIFIC = 3
    SUBSCRIBER_NUMBER = 4
    ALPHANUMERIC = 5
    ABBREVIATED = 6


class Npi(enum.IntEnum):
    """Numbering plan indicator of an address (section 5.2.6)."""

    UNKNOWN = 0
    ISDN = 1  # E.163 / E.164: ordinary phone numbers
    DATA = 3  # X.121
    TELEX = 4  # F.69
    LAND_MOBILE = 6  # E.212
    NATIONAL = 8
    PRIVATE = 9
    ERMES = 10
    INTERNET = 14  # IP
    WAP_CLIENT_ID = 18


#: interface_version of a bind: 0x34 is SMPP v3.4 (0x33 and below mean v3.3 or earlier).
SMPP_VERSION_34 = 0x34

# esm_class (section 5.2.12): bits 1-0 messaging mode, bits 5-2 message type, bits 7-6 GSM features.
ESM_CLASS_MODE_MASK = 0x03
ESM_CLASS_MODE_DEFAULT = 0x00
ESM_CLASS_MODE_DATAGRAM = 0x01
ESM_CLASS_MODE_FORWARD = 0x02
ESM_CLASS_MODE_STORE_AND_FORWARD = 0x03
ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_DELIVERY_RECEIPT = 0x04  # deliver_sm carrying an SMSC delivery receipt
ESM_CLASS_DELIVERY_ACK = 0x08  # SME delivery acknowledgement
ESM_CLASS_USER_ACK = 0x10  # SME manual/user acknowledgement
ESM_CLASS_CONVERSATION_ABORT = 0x18
ESM_CLASS_INTERMEDIATE_NOTIFICATION = 0x20
ESM_CLASS_UDHI = 0x40  # short_message starts with a user data header (concatenation, ports)
ESM_CLASS_REPLY_PATH = 0x80

# registered_delivery (section 5.2.17).
REG_DLV_NONE = 0x00
REG_DLV_SMSC_RECEIPT_MASK = 0x03
REG_DLV_SMSC_RECEIPT = 0x01  # a receipt for the final outcome, success or failure
REG_DLV_SMSC_RECEIPT_ON_FAILURE = 0x02  # a receipt only when delivery failed
REG_DLV_SME_ACK_MASK = 0x0C
REG_DLV_SME_DELIVERY_ACK = 0x04
REG_DLV_SME_USER_ACK = 0x08
REG_DLV_INTERMEDIATE = 0x10

# data_coding (section 5.2.19).
DC_DEFAULT = 0x00  # SMSC default alphabet, in practice GSM 03.38
DC_IA5 = 0x01  # IA5 (CCITT T.50) / ASCII
DC_BINARY_8BIT = 0x02  # octet unspecified (8-bit binary)
DC_LATIN1 = 0x03  # ISO-8859-1
DC_BINARY = 0x04  # octet unspecified (8-bit binary)
DC_JIS = 0x05  # X 0208-1990
DC_CYRILLIC = 0x06  # ISO-8859-5
DC_HEBREW = 0x07  # ISO-8859-8
DC_UCS2 = 0x08  # ISO/IEC-10646, big-endian UTF-16 code units in practice
DC_PICTOGRAM = 0x09
DC_ISO2022JP = 0x0A  # music codes
DC_EXTENDED_KANJI = 0x0D  # JIS X 0212-1990
DC_KS_C_5601 = 0x0E
