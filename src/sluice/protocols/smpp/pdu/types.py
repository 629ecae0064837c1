"""SMPP v3.4 PDUs as immutable structs: one class per PDU, and the values inside them.

One class per PDU, its mandatory fields named as in the specification (section 4), plus the
header's ``sequence_number`` and ``command_status``; PDUs that may carry optional parameters have
``tlvs``, a tuple of ``Tlv`` kept verbatim and in order so that unknown TLVs round-trip exactly.

Every subclass repeats ``frozen=True``: msgspec would inherit it from ``Pdu`` anyway, but a type
checker reads only the class's own keywords and would otherwise take the PDU for mutable.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from sluice.protocols.smpp.constants import SMPP_VERSION_34, CommandId

#: Every PDU starts with command_length, command_id, command_status and sequence_number,
#: 4 octets each.
HEADER_LENGTH = 16
#: sm_length is one octet and section 5.2.22 caps short_message at 254 octets; longer content
#: goes in the message_payload TLV or is segmented.
MAX_SHORT_MESSAGE_LENGTH = 254
#: Valid sequence numbers (section 5.1.4); 0 appears only on a generic_nack to an unreadable PDU.
MAX_SEQUENCE_NUMBER = 0x7FFFFFFF


class Tlv(msgspec.Struct, frozen=True, gc=False):
    """One optional parameter: a 16-bit tag and its raw value, exactly as on the wire."""

    tag: int
    value: bytes


class SmeAddress(msgspec.Struct, frozen=True, gc=False):
    """A submit_multi destination of dest_flag 1: one SME address."""

    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""


class DistributionList(msgspec.Struct, frozen=True, gc=False):
    """A submit_multi destination of dest_flag 2: a distribution list defined on the SMSC."""

    dl_name: str = ""


class UnsuccessSme(msgspec.Struct, frozen=True, gc=False):
    """A destination a submit_multi could not reach, with the command_status explaining why."""

    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    error_status_code: int = 0


class Pdu(msgspec.Struct, frozen=True, gc=False, repr_omit_defaults=True):
    """Base of every PDU: the header fields that are not implied by the class."""

    command_id: ClassVar[int]
    sequence_number: int = 0
    command_status: int = 0


# --- session management ----------------------------------------------------------------------


class GenericNack(Pdu, frozen=True):
    """Negative acknowledgement of a PDU whose header was unusable (section 4.3)."""

    command_id: ClassVar[int] = CommandId.generic_nack


class _Bind(Pdu, frozen=True):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = SMPP_VERSION_34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


class BindTransmitter(_Bind, frozen=True):
    """Bind to send messages (section 4.1.1)."""

    command_id: ClassVar[int] = CommandId.bind_transmitter


class BindReceiver(_Bind, frozen=True):
    """Bind to receive messages and receipts (section 4.1.3)."""

    command_id: ClassVar[int] = CommandId.bind_receiver


class BindTransceiver(_Bind, frozen=True):
    """Bind to send and receive over one connection (section 4.1.5)."""

    command_id: ClassVar[int] = CommandId.bind_transceiver


class _BindResp(Pdu, frozen=True):
    system_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class BindTransmitterResp(_BindResp, frozen=True):
    """Answer to bind_transmitter; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_transmitter_resp


class BindReceiverResp(_BindResp, frozen=True):
    """Answer to bind_receiver; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_receiver_resp


class BindTransceiverResp(_BindResp, frozen=True):
    """Answer to bind_transceiver; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_transceiver_resp


class Outbind(Pdu, frozen=True):
    """The SMSC asks the ESME to bind as a receiver (section 4.1.7)."""

    command_id: ClassVar[int] = CommandId.outbind
    system_id: str = ""
    password: str = ""


class Unbind(Pdu, frozen=True):
    """End the session (section 4.2.1)."""

    command_id: ClassVar[int] = CommandId.unbind


class UnbindResp(Pdu, frozen=True):
    """Answer to unbind."""

    command_id: ClassVar[int] = CommandId.unbind_resp


class EnquireLink(Pdu, frozen=True):
    """Link check, either direction (section 4.11)."""

    command_id: ClassVar[int] = CommandId.enquire_link


class EnquireLinkResp(Pdu, frozen=True):
    """Answer to enquire_link."""

    command_id: ClassVar[int] = CommandId.enquire_link_resp


# --- messages --------------------------------------------------------------------------------


class _ShortMessage(Pdu, frozen=True):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()


class SubmitSm(_ShortMessage, frozen=True):
    """A message from the ESME to the SMSC (section 4.4)."""

    command_id: ClassVar[int] = CommandId.submit_sm


class DeliverSm(_ShortMessage, frozen=True):
    """A message or delivery receipt from the SMSC to the ESME (section 4.6).

    schedule_delivery_time and validity_period exist on the wire but the SMSC sets them empty.
    """

    command_id: ClassVar[int] = CommandId.deliver_sm


class SubmitSmResp(Pdu, frozen=True):
    """Answer to submit_sm: the SMSC's message_id, which delivery receipts will quote."""

    command_id: ClassVar[int] = CommandId.submit_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class DeliverSmResp(Pdu, frozen=True):
    """Answer to deliver_sm; message_id is unused and normally empty."""

    command_id: ClassVar[int] = CommandId.deliver_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class DataSm(Pdu, frozen=True):
    """A message in either direction with its content in TLVs (section 4.7)."""

    command_id: ClassVar[int] = CommandId.data_sm
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0
    tlvs: tuple[Tlv, ...] = ()


class DataSmResp(Pdu, frozen=True):
    """Answer to data_sm; ``tlvs`` may carry delivery_failure_reason, network_error_code…"""

    command_id: ClassVar[int] = CommandId.data_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class SubmitMulti(Pdu, frozen=True):
    """One message to up to 255 SME addresses or distribution lists (section 4.5)."""

    command_id: ClassVar[int] = CommandId.submit_multi
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addresses: tuple[SmeAddress | DistributionList, ...] = ()
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()


class SubmitMultiResp(Pdu, frozen=True):
    """Answer to submit_multi, listing the destinations that failed."""

    command_id: ClassVar[int] = CommandId.submit_multi_resp
    message_id: str = ""
    unsuccess_smes: tuple[UnsuccessSme, ...] = ()
    tlvs: tuple[Tlv, ...] = ()


class QuerySm(Pdu, frozen=True):
    """Ask the state of a previously submitted message (section 4.8)."""

    command_id: ClassVar[int] = CommandId.query_sm
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""


class QuerySmResp(Pdu, frozen=True):
    """Answer to query_sm: final_date, message_state (see ``MessageState``) and error_code."""

    command_id: ClassVar[int] = CommandId.query_sm_resp
    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0


class CancelSm(Pdu, frozen=True):
    """Cancel one or more pending messages (section 4.9)."""

    command_id: ClassVar[int] = CommandId.cancel_sm
    service_type: str = ""
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""


class CancelSmResp(Pdu, frozen=True):
    """Answer to cancel_sm."""

    command_id: ClassVar[int] = CommandId.cancel_sm_resp


class ReplaceSm(Pdu, frozen=True):
    """Replace a pending message (section 4.10)."""

    command_id: ClassVar[int] = CommandId.replace_sm
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


class ReplaceSmResp(Pdu, frozen=True):
    """Answer to replace_sm."""

    command_id: ClassVar[int] = CommandId.replace_sm_resp


class AlertNotification(Pdu, frozen=True):
    """The SMSC tells the ESME that a mobile became available (section 4.12); no response."""

    command_id: ClassVar[int] = CommandId.alert_notification
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    esme_addr_ton: int = 0
    esme_addr_npi: int = 0
    esme_addr: str = ""
    tlvs: tuple[Tlv, ...] = ()
