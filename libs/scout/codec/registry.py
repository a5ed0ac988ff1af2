"""Every codec by family (`CODECS`) and THE parser of codec spec strings (`get_codec`).

Grammar (``<b>`` is 8, 4 or 2; ``<axes>`` is empty for KIVI, ``-token`` or ``-study``):

    bf16                                  every layer raw (``fp16`` and ``16`` are accepted aliases)
    int<b><axes>[:keep=L,L,…]             one width everywhere, the listed layers raw       (`QuantCodec`)
    mixed<axes>:[L=B,L=B,…]               4 bits everywhere, the listed layers at B in 2/4/8/16 (`MixedCodec`)
    mixed@<plan.json>                     a calibrated plan file                            (`PlanFileCodec`)
    delta-int<b><axes>[:group=G]          CacheGen-style anchors + quantized deltas          (`DeltaCodec`)
    <any of the above>+zstd[<level>]      the same blob inside one zstd frame                (`ZstdCodec`)

``mixed:`` is always a layer map and ``mixed@`` always a plan file. The eval's reports were written when
``mixed:<plan.json>`` meant a plan file; a ``mixed:`` spec whose rest ends in ``.json`` (never a layer map) still
reads as that plan file, so committed run.json commands parse; its canonical spelling is ``mixed@<plan.json>``.

Transport plans (what `scout.pipeline` and the planner's `Plan.bit_plan` carry) are the KIVI bit-plan codecs:
`bit_plan_of` turns such a spec into a `BitPlan` and `bit_plan_spec` names a plan back.
"""

from __future__ import annotations

import re

from scout.codec.base import AXES, Codec, CodecSpecError
from scout.codec.delta import DEFAULT_GROUP, DeltaCodec
from scout.codec.entropy import ZSTD_LEVEL, ZstdCodec
from scout.codec.mixed import MixedCodec, PlanFileCodec
from scout.codec.quant import BitPlan
from scout.codec.raw import Bf16Codec
from scout.codec.uniform import QuantCodec

__all__ = ["ALIASES", "CODECS", "CodecSpecError", "bit_plan_of", "bit_plan_spec", "get_codec"]

CODECS: dict[str, type[Codec]] = {
    cls.family: cls for cls in (Bf16Codec, QuantCodec, MixedCodec, PlanFileCodec, DeltaCodec, ZstdCodec)
}
"""Codec classes by family name."""
ALIASES: dict[str, str] = {"fp16": "bf16", "16": "bf16"}
"""Other spellings of a spec, read as the spec they stand for."""
MAX_SPEC_CHARS = 4096

_AXES_BY_SUFFIX = {suffix: axes for axes, suffix in AXES.items()}
_AXES_RE = r"(?P<axes>-token|-study)?"
_QUANT = re.compile(rf"int(?P<bits>[248]){_AXES_RE}(?::keep=(?P<keep>\d{{1,4}}(?:,\d{{1,4}})*))?")
_MIXED = re.compile(rf"mixed{_AXES_RE}:(?P<map>\d{{1,4}}=(?:2|4|8|16)(?:,\d{{1,4}}=(?:2|4|8|16))*)?")
_PLAN = re.compile(r"mixed@(?P<path>.+)", re.DOTALL)
_LEGACY_PLAN = re.compile(r"mixed:(?P<path>.*\.json)", re.DOTALL)
_DELTA = re.compile(rf"delta-int(?P<bits>[248]){_AXES_RE}(?::group=(?P<group>\d{{1,6}}))?")
_ZSTD = re.compile(r"(?P<inner>.+)\+zstd(?P<level>\d{1,2})?", re.DOTALL)
_HELP = (
    "use bf16, int<b>[-token|-study][:keep=L,…], mixed[-token|-study]:L=B,…, mixed@<plan.json>, "
    "delta-int<b>[-token|-study][:group=G], each optionally +zstd[<level>] (b in 8, 4, 2)"
)


def _axes(suffix: str | None) -> str:
    return _AXES_BY_SUFFIX[suffix or ""]


def _base_codec(spec: str) -> Codec:
    spec = ALIASES.get(spec, spec)
    if spec == "bf16":
        return Bf16Codec()
    if m := _QUANT.fullmatch(spec):
        keep = tuple(int(x) for x in m["keep"].split(",")) if m["keep"] else ()
        return QuantCodec(int(m["bits"]), _axes(m["axes"]), keep)
    if m := _MIXED.fullmatch(spec):
        items = [item.split("=") for item in m["map"].split(",")] if m["map"] else []
        return MixedCodec(tuple((int(layer), int(bits)) for layer, bits in items), _axes(m["axes"]))
    if m := _PLAN.fullmatch(spec) or _LEGACY_PLAN.fullmatch(spec):
        return PlanFileCodec(m["path"])
    if m := _DELTA.fullmatch(spec):
        return DeltaCodec(int(m["bits"]), _axes(m["axes"]), int(m["group"] or DEFAULT_GROUP))
    raise CodecSpecError(f"unknown codec {spec[:80]!r}: {_HELP}")


def get_codec(spec: str) -> Codec:
    """The codec a spec string names (grammar: module docstring); `CodecSpecError` for anything else."""
    if not isinstance(spec, str):
        raise CodecSpecError(f"a codec spec must be a string, got {type(spec).__name__}")
    if not spec or len(spec) > MAX_SPEC_CHARS:
        raise CodecSpecError(f"a codec spec must have 1 to {MAX_SPEC_CHARS} characters: {_HELP}")
    if m := _ZSTD.fullmatch(spec):
        if _ZSTD.fullmatch(m["inner"]):
            raise CodecSpecError(f"{spec[:80]!r}: zstd wraps one codec, not another zstd layer")
        inner = _base_codec(m["inner"])
        return ZstdCodec(inner, int(m["level"]) if m["level"] else ZSTD_LEVEL)
    return _base_codec(spec)


def bit_plan_of(spec: str) -> BitPlan:
    """The `BitPlan` of a transport plan: ``bf16``, ``int8``/``int4``/``int2`` (optionally ``:keep=…``) or a
    ``mixed:<layer>=<bits>,…`` layer map, all on KIVI axes (the axes the pipeline quantizes with).

    A valid codec that is no such plan (a plan file, a delta or zstd codec, other axes) is a `CodecSpecError` too:
    the pipeline would otherwise send it under a name that promises something else.
    """
    codec = get_codec(spec)
    if not isinstance(codec, Bf16Codec | QuantCodec | MixedCodec) or codec.axes != "kivi":
        raise CodecSpecError(
            f"{spec[:80]!r} is a codec but not a transport bit plan: use bf16, int8, int4, int2 or "
            "mixed:<layer>=<bits>,… (a calibrated plan file is loaded and passed as its layer map)"
        )
    return codec.bit_plan


def bit_plan_spec(plan: BitPlan) -> str:
    """The inverse of `bit_plan_of`: ``bf16``/``int<b>`` for a uniform plan, else the ``mixed:`` layer map (which
    defaults to 4 bits: another default has no transport name, a `CodecSpecError`)."""
    if not plan.overrides:
        return Bf16Codec().spec if plan.default == 16 else QuantCodec(plan.default).spec
    return MixedCodec.of(plan).spec
