"""Reading a server's Prometheus ``/metrics`` text, for health reports and the adaptive limit."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

__all__ = ["load_metrics", "prometheus_samples"]


def _selector(wanted: str) -> tuple[str, tuple[str, ...]]:
    """``name{a="x",b="y"}`` -> ``("name", ('a="x"', 'b="y"'))``; a plain name has no labels."""
    brace = wanted.find("{")
    if brace == -1:
        return wanted, ()
    labels = wanted[brace + 1 : wanted.rfind("}")]
    return wanted[:brace], tuple(p.strip() for p in labels.split(",") if p.strip())


def prometheus_samples(text: str, names: Collection[str]) -> dict[str, list[float]]:
    """Finite values of the metrics named in *names*, one per label set, from exposition text.

    A name may carry labels the series must have, as Prometheus writes them:
    ``nv_inference_pending_request_count{model="tiny_vlm"}`` keeps only that
    model's series (other labels may be there too); the values are listed
    under the name as given.  Comments, other metrics and unparseable lines are
    skipped; a trailing timestamp is ignored.  Aggregating (sum, mean, max) is
    the caller's choice.
    """
    by_name: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for wanted in names:
        name, labels = _selector(wanted)
        by_name.setdefault(name, []).append((wanted, labels))
    found: dict[str, list[float]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace, space = line.find("{"), line.find(" ")
        label_text = ""
        if brace != -1 and (space == -1 or brace < space):
            close = line.rfind("}")
            name, rest = line[:brace], line[close + 1 :]
            label_text = "," + line[brace + 1 : close].replace(", ", ",") + ","
        elif space != -1:
            name, rest = line[:space], line[space:]
        else:
            continue
        selectors = by_name.get(name)
        if selectors is None:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if not math.isfinite(value):
            continue
        for wanted, labels in selectors:
            if all(f",{label}," in label_text for label in labels):
                found.setdefault(wanted, []).append(value)
    return found


def load_metrics(
    text: str,
    *,
    running: Sequence[str] = (),
    waiting: Sequence[str] = (),
    kv_cache: Sequence[str] = (),
) -> dict[str, float]:
    """A server's load from its exposition text: ``running``, ``waiting``, ``kv_cache_usage`` (0..1).

    Each argument names the metric, newest name first (the first one the text
    holds is used, so a server exporting an old and a new name is not counted
    twice); figures the text lacks are left out.

    How series (one per engine or model name: vLLM data parallel exports one
    per ``engine`` label) are combined:

    * request counts are **summed**: the server as a whole runs / queues that
      many;
    * KV-cache usage takes the **maximum**: a fraction per engine, and the
      question it answers is "is any engine full?".  An engine at 100 % preempts
      and recomputes no matter how empty the others are (requests are not
      moved between engines), so an average would hide exactly the state that
      makes the server slower.
    """
    out: dict[str, float] = {}
    wanted = {*running, *waiting, *kv_cache}
    samples = prometheus_samples(text, wanted)
    for key, names, combine in (
        ("running", running, sum),
        ("waiting", waiting, sum),
        ("kv_cache_usage", kv_cache, max),
    ):
        for name in names:
            if samples.get(name):
                out[key] = float(combine(samples[name]))
                break
    return out
