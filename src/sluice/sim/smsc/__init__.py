"""SMSC simulator: an SMPP v3.4 server that stands in for an operator's SMS centre.

Sluice's SMPP channel binds to an SMSC, keeps a window of submit_sm in flight, and takes
delivery receipts and mobile-originated (MO) messages back. This simulator is that SMSC for the
demo, the integration tests and the benchmarks (``sluice sim smsc``): a real TCP server built
on the sans-IO `SmppSession` (asyncio Protocol API, one write per batch of answers) that
answers like a loaded operator link would, slow, throttling, flaky or strict, and that counts
and records what it got so a test can check at-least-once delivery. Its defaults are a real
SMSC's: an unbound connection is closed after 30 s, a silent bind is sent enquire_link, a
refused bind closes the connection, bad time fields, SAR TLVs and sequence numbers are
refused with their SMPP v3.4 status, and an SMPP v3.3 bind gets no TLV.

Its parts, each with the rules it follows:
    `server`     the simulator: listening, binds per account, options, counts, the record
    `session`    one ESME connection: binds, enquire_link, unbind, refused requests, query_sm
    `liveness`   the bind deadline, and enquire_link to silent binds
    `checks`     what a request must get right: sequence number, time fields, SAR TLVs
    `policy`     how a submit_sm is answered: window, TPS, faults, latency
    `receipts`   each accepted message's fate and the deliver_sm receipts reporting it
    `mo`         MO messages sent on demand
    `stats`      what it counts (`SmscSimulator.stats`, ``GET /_smsc/stats``)
    `control`    the control endpoints (``start_control``)
    `options`    `SmscOptions`, every field changeable while it runs
    `records`    what it records (`SmscSimulator.received`, ``messages``): the last
                 ``record_limit`` accepted messages
    `cli`        the ``sluice sim smsc`` command

Examples:
    From the shell::

        sluice sim smsc --port 2775 --account acme:pw --latency-ms 20 --max-window 50 \\
            --tps 200 --receipt-delay-ms 500 --receipt-state DELIVRD=0.9 \\
            --receipt-state UNDELIV=0.1 --report-seconds 5
        curl -s -XPOST localhost:2776/_smsc/config -d '{"error_ratio": 0.05}'
        curl -s -XPOST localhost:2776/_smsc/mo -d '{"from": "4915112345678", "to": "1234",
            "body": "STOP"}'

    In a test::

        smsc = SmscSimulator(SmscOptions(accounts={"acme": "pw"}, seed=1))
        port = await smsc.start()            # port 0: the OS picks a free one
        ...                                  # point an SMPP channel at 127.0.0.1:port
        await smsc.wait_for(submits=100, receipts_acked=100)
        assert smsc.messages() == expected_texts
        await smsc.close()

Warning:
    The record keeps each accepted PDU (about 600 bytes with its bookkeeping, measured with
    tracemalloc for a 19-character message): a million messages, the default
    ``record_limit``, is about 600 MB. Lower ``record_limit`` (0 keeps
    none, and query_sm then knows no id) for long benchmark runs, or reset between runs.
"""

from sluice.sim.smsc.cli import add_arguments, options_from_args, run_from_args
from sluice.sim.smsc.mo import MoSent, NoReceiverBound
from sluice.sim.smsc.options import SmscOptions
from sluice.sim.smsc.records import Concat, Submitted
from sluice.sim.smsc.server import SmscSimulator
from sluice.sim.smsc.stats import ARRIVAL_WINDOW_SECONDS, BindStats, SmscStats

__all__ = [
    "ARRIVAL_WINDOW_SECONDS",
    "BindStats",
    "Concat",
    "MoSent",
    "NoReceiverBound",
    "SmscOptions",
    "SmscSimulator",
    "SmscStats",
    "Submitted",
    "add_arguments",
    "options_from_args",
    "run_from_args",
]
