"""Admission: only a single ordinary question goes any further.

Zone transfers, meta types, OPT or TSIG as the question and classes other
than IN are answered here, from the question alone; they never reach an
upstream, so an upstream that ignores them cannot be marked unhealthy by a
client that sends them. (A second question, records in the answer or
authority section of a query and unknown opcodes are refused earlier, by the
parser and the listener.)
"""

from __future__ import annotations

from typing import Final

from dns.rcode import Rcode
from dns.rdataclass import RdataClass
from dns.rdatatype import RdataType

from resolver.pipeline.query import Query, Reply
from resolver.wire.message import header_reply

# Final, so the compiled build reads these as constants: a module global is a dict
# lookup, an enum member a generic attribute lookup, and an int compared with an
# IntEnum a generic comparison.
CLASS_IN: Final = int(RdataClass.IN)
ANY: Final = int(RdataType.ANY)

# Question types with an answer of their own, by RFC: none of them is a lookup.
LOCAL_ANSWERS: Final[dict[int, Rcode]] = {
    RdataType.TYPE0: Rcode.FORMERR,  # reserved
    RdataType.OPT: Rcode.FORMERR,  # a pseudo-record, never a question (RFC 6891 6.1.1)
    RdataType.TKEY: Rcode.FORMERR,
    RdataType.TSIG: Rcode.FORMERR,
    RdataType.IXFR: Rcode.REFUSED,  # dnsgate serves no zones
    RdataType.AXFR: Rcode.REFUSED,
    RdataType.MAILB: Rcode.NOTIMP,  # obsolete meta types (RFC 883)
    RdataType.MAILA: Rcode.NOTIMP,
}
# RFC 6895 section 3.1: meta types, ANY (255) the only lookup among them
META_FIRST: Final = 128
META_LAST: Final = 255


class AdmissionStage:
    """Answers the questions no upstream should be asked."""

    def __init__(self) -> None:
        self.answered: dict[str, int] = {}

    def stats(self) -> dict[str, int]:
        """Questions answered here, in all and by reason (``qtype``, ``class``)."""
        return {"answered": sum(self.answered.values()), **self.answered}

    def resolve(self, query: Query) -> Reply | None:
        q = query.question
        if q.qclass != CLASS_IN:
            return self._answer(query, Rcode.REFUSED, "class")
        qtype = q.qtype
        rcode = LOCAL_ANSWERS.get(qtype)
        if rcode is None and META_FIRST <= qtype <= META_LAST and qtype != ANY:
            rcode = Rcode.NOTIMP
        if rcode is None:
            return None
        return self._answer(query, rcode, "qtype")

    def _answer(self, query: Query, rcode: Rcode, why: str) -> Reply:
        self.answered[why] = self.answered.get(why, 0) + 1
        return Reply(header_reply(query.wire, query.question, int(rcode)), int(rcode), rcode.name.lower())
