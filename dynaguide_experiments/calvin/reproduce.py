"""Do two ``dynaguide calvin eval`` runs give the same trials?  (``dynaguide calvin same-trials A B``)

Used to show that a code change changes no result: the same command run on two commits (same models, data, seeds)
must give every trial the same outcome, length and per-chunk record.  Compared per trial (``target``, ``method``,
``trial``): ``seed``, ``label`` (first behaviour), ``steps``, ``reversals`` and the per-chunk ``chunk_turns`` and
``splice_jumps`` (rounded to 3 and 5 decimals when written, so a changed action shows up there first).  Timings
are not compared.
"""

from __future__ import annotations

from pathlib import Path

from dynaguide_experiments.calvin.harness import read_trials

#: the fields of a trial record that a behaviour-preserving change leaves equal
COMPARED_FIELDS = ("seed", "label", "steps", "reversals", "chunk_turns", "splice_jumps")


def _trials(directory: Path) -> dict[tuple[str, str, int], dict]:
    files = sorted((Path(directory) / "trials").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no trial logs under {Path(directory) / 'trials'} (a `dynaguide calvin eval --out` "
                                "directory is expected)")
    out = {}
    for f in files:
        for r in read_trials(f):
            out[(str(r.get("target")), str(r.get("method")), int(r.get("trial", -1)))] = r
    return out


def compare_trial_logs(a: str | Path, b: str | Path) -> dict:
    """``{"trials": n in both, "identical": k, "only_in_a": [...], "only_in_b": [...], "differences": [...]}``;
    each difference names the trial and its first differing field with both values."""
    ta, tb = _trials(Path(a)), _trials(Path(b))
    common = sorted(set(ta) & set(tb))
    differences = []
    for key in common:
        for field in COMPARED_FIELDS:
            if ta[key].get(field) != tb[key].get(field):
                differences.append({"target": key[0], "method": key[1], "trial": key[2], "field": field,
                                    "a": ta[key].get(field), "b": tb[key].get(field)})
                break
    return {"a": str(a), "b": str(b), "fields": list(COMPARED_FIELDS), "trials": len(common),
            "identical": len(common) - len(differences),
            "only_in_a": [list(k) for k in sorted(set(ta) - set(tb))],
            "only_in_b": [list(k) for k in sorted(set(tb) - set(ta))], "differences": differences}
