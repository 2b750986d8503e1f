"""The register map in use: turns results and status into register writes, and decodes PLC inputs.

Data flow: PlcLink writer thread -> RegisterMap -> (address, words) runs -> transport.
Pure and deterministic; never does I/O, never reorders a result block so that the sequence
number lands before the data it announces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lineguard.plc.codec import decode, encode, scale_score
from lineguard.plc.config import FieldSpec, RegisterMapConfig

# Status word bits (docs/plc.md). Bits 0-4 come from the service, 5-6 from the link itself.
STATUS_BITS: dict[str, int] = {
    "ready": 0,
    "fault": 1,
    "degraded": 2,
    "model_loaded": 3,
    "camera_ok": 4,
    "link_recovered": 5,
    "result_overflow": 6,
}
FLAG_DEADLINE_FAILSAFE = 0x0001  # the link wrote the fail-safe verdict because the deadline passed
FLAG_DECISION_FAILSAFE = 0x0002  # the decision stage itself produced a fail-safe verdict
SEQ_MODULO = 0x10000  # result_seq runs 1..65535 and skips 0 ("no result yet")


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``; never 0."""
    nxt = (seq + 1) % SEQ_MODULO
    return nxt or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlcResult:
    """One result block as it will be written (already coded for the PLC)."""

    seq: int
    part_id: int
    verdict: int
    defect_code: int
    score: float
    flags: int
    t_queued_ns: int
    guess_code: int = 0  # the classifier's arg-max class code (0 none), also for an unknown defect
    confidence: float = float("nan")  # its probability; NaN when the classifier did not run


@dataclass(frozen=True, slots=True, kw_only=True)
class PlcInputs:
    """What the PLC wrote for LineGuard, decoded from one read."""

    trigger_seq: int
    trigger_part_id: int
    recipe_request: int
    result_ack: int


def status_word(bits: Mapping[str, bool]) -> int:
    """Pack named status bits into one word; unknown names are a programming error."""
    word = 0
    for name, on in bits.items():
        if on:
            word |= 1 << STATUS_BITS[name]
    return word


def contiguous_runs(words: Mapping[int, int]) -> list[tuple[int, list[int]]]:
    """Group ``{address: word}`` into ``[(start, [words...])]`` runs of adjacent addresses."""
    runs: list[tuple[int, list[int]]] = []
    for addr in sorted(words):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr:
            runs[-1][1].append(words[addr])
        else:
            runs.append((addr, [words[addr]]))
    return runs


class RegisterMap:
    """Encodes/decodes the configured map. Built once from ``RegisterMapConfig``."""

    def __init__(self, *, cfg: RegisterMapConfig) -> None:
        self.cfg = cfg
        inputs = cfg.input_fields()
        self.input_start = min(s.address for s in inputs.values())
        self.input_count = max(s.address + s.dtype.words for s in inputs.values()) - self.input_start

    def _put(self, out: dict[int, int], spec: FieldSpec, value: float) -> None:
        for i, word in enumerate(encode(value, spec.dtype, self.cfg.word_order)):
            out[spec.address + i] = word

    def result_runs(self, result: PlcResult) -> list[tuple[int, list[int]]]:
        """Runs to write for one result; the run holding result_seq is always last.

        With the default map this is a single FC16 write (atomic on the PLC); with a scattered
        map the PLC still sees the data before the sequence number that announces it.
        """
        c = self.cfg
        data: dict[int, int] = {}
        self._put(data, c.part_id, result.part_id)
        self._put(data, c.verdict, result.verdict)
        self._put(data, c.defect_class, result.defect_code)
        self._put(data, c.score, scale_score(result.score, c.score.dtype, c.score_scale))
        self._put(data, c.result_flags, result.flags)
        if c.class_guess is not None:
            self._put(data, c.class_guess, result.guess_code)
        if c.class_confidence is not None:
            self._put(data, c.class_confidence,
                      scale_score(result.confidence, c.class_confidence.dtype, c.confidence_scale))
        self._put(data, c.result_seq, result.seq)
        runs = contiguous_runs(data)
        seq_addr = c.result_seq.address
        runs.sort(key=lambda run: run[0] <= seq_addr < run[0] + len(run[1]))
        return runs

    def heartbeat_runs(self, *, heartbeat: int, status: int, recipe: int) -> list[tuple[int, list[int]]]:
        """Heartbeat, status word and active recipe, written together every heartbeat period."""
        data: dict[int, int] = {}
        self._put(data, self.cfg.heartbeat, heartbeat & 0xFFFF if self.cfg.heartbeat.dtype.words == 1 else heartbeat)
        self._put(data, self.cfg.status, status)
        self._put(data, self.cfg.active_recipe, recipe)
        return contiguous_runs(data)

    def seq_field_words(self) -> tuple[int, int]:
        """(address, word count) of result_seq, read once at connect to continue numbering."""
        return self.cfg.result_seq.address, self.cfg.result_seq.dtype.words

    def decode_field(self, words: Sequence[int], spec: FieldSpec, start: int) -> int:
        off = spec.address - start
        return int(decode(list(words[off : off + spec.dtype.words]), spec.dtype, self.cfg.word_order))

    def decode_inputs(self, words: Sequence[int]) -> PlcInputs:
        """Decode the words of one read of ``input_count`` registers from ``input_start``."""
        s = self.input_start
        c = self.cfg
        return PlcInputs(
            trigger_seq=self.decode_field(words, c.trigger_seq, s),
            trigger_part_id=self.decode_field(words, c.trigger_part_id, s),
            recipe_request=self.decode_field(words, c.recipe_request, s),
            result_ack=self.decode_field(words, c.result_ack, s),
        )

    def decode_result(self, regs: Mapping[int, int]) -> dict[str, float | int]:
        """Decode a result block from a register image ``{address: word}`` (used by the simulator/tests)."""
        out: dict[str, float | int] = {}
        names = ("result_seq", "part_id", "verdict", "defect_class", "score", "result_flags", *self.cfg.class_fields())
        for name in names:
            spec: FieldSpec = getattr(self.cfg, name)
            words = [regs.get(spec.address + i, 0) for i in range(spec.dtype.words)]
            out[name] = decode(words, spec.dtype, self.cfg.word_order)
        return out
