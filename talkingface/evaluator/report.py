"""The readable table of a results dict, and json_safe: metrics.json values as strict JSON."""
import math

# Not every consumer parses JSON's non-standard Infinity, so inf/nan become strings/null.
NON_FINITE_NOTE = ('"inf" stands for +infinity (e.g. PSNR of identical frames); null means no value '
                   "(nothing to measure, e.g. the face mesh missed every frame)")


def json_safe(value):
    """Replace +-inf by "inf"/"-inf" and NaN by None, recursively; numpy scalars become Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


# Bookkeeping keys that stay in metrics.json but would only widen the logged table.
TABLE_HIDDEN_SUFFIXES = ("-frames", "-skipped", "-D@0", "-C@0")


def format_table(per_clip, mean, columns=None):
    """Rows: one per clip then 'mean'; columns: the metric keys (first-seen order, bookkeeping
    keys such as LMD-skipped or SyncScore-D@0 left to the JSON)."""
    if columns is None:
        columns = [k for k in dict.fromkeys([k for row in per_clip.values() for k in row] + list(mean))
                   if not k.endswith(TABLE_HIDDEN_SUFFIXES)]
    rows = [[name] + [_cell(values.get(c)) for c in columns] for name, values in per_clip.items()]
    rows.append(["mean"] + [_cell(mean.get(c)) for c in columns])
    header = ["clip"] + list(columns)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), line(rows[-1])]
    return "\n".join(out)
