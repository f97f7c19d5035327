"""The text of the preparation's report (what was skipped, excluded or unusual is gathered in a
`common.report.Report`)."""
from __future__ import annotations

from pathlib import Path

from dataset import LIST_FOLDER
from scripts.datatools.common.report import Report

CATEGORIES = ("skipped", "excluded", "anomaly")


def report_text(report_json: dict, report: Report) -> str:
    """Human-readable version of the JSON report."""
    lab, pool, classes = report_json["labeled"], report_json["pool"], report_json["classes"]
    settings = report_json["settings"]
    lines = [f"CAS(ME)^3 preparation: {settings['root']} -> {settings['out']}",
             f"classes: {', '.join(f'{i} {c}' for i, c in enumerate(classes))}",
             f"labeled MEs: {lab['samples']} from {lab['annotation_rows']} annotation rows "
             f"({lab['written']} written, {lab['reused']} reused)",
             "", "class counts per subject:",
             "  " + "subject".ljust(10) + "".join(c.rjust(10) for c in classes) + "total".rjust(8)]
    for subject, counts in lab["per_subject"].items():
        lines.append("  " + subject.ljust(10) + "".join(str(counts.get(c, 0)).rjust(10) for c in classes)
                     + str(sum(counts.values())).rjust(8))
    lines.append("  " + "all".ljust(10) + "".join(str(lab["per_class"].get(c, 0)).rjust(10) for c in classes)
                 + str(lab["samples"]).rjust(8))
    lines += report.item_lines([(category, category) for category in CATEGORIES])
    lines += ["", "counted:"]
    lines += [f"  [{kind}] {info['count']}, e.g. {info['example']}"
              for kind, info in report_json["counted"].items()]
    threshold = report_json["threshold"]
    value = "none" if threshold["value"] is None else f"{threshold['value']:.6g} ({threshold['source']})"
    lines += ["", f"intensity measure: {threshold['measure']}; pool threshold: {value}"]
    if pool["enabled"]:
        lines.append(f"pool ({', '.join(pool['parts'])}, gap {pool['gap']}, stride {pool['stride']}): "
                     f"{pool['pairs']} pairs from {pool['videos']} videos; kept {pool['kept']}, dropped "
                     f"{pool['dropped']}, skipped {pool['skipped']} ({pool['written']} written, "
                     f"{pool['reused']} reused)")
    else:
        lines.append("pool: not prepared (--pool none)")
    return "\n".join(lines) + "\n"


def print_summary(report_json: dict, report: Report, out: Path) -> None:
    """The labeled counts, the report's categories with a first example, and where the outputs are."""
    lab = report_json["labeled"]
    print(f"labeled MEs: {lab['samples']} of {lab['annotation_rows']} rows ({lab['written']} written, "
          f"{lab['reused']} reused) over {len(lab['per_subject'])} subjects; "
          + ", ".join(f"{c} {lab['per_class'].get(c, 0)}" for c in report_json["classes"]))
    for category in CATEGORIES:
        kinds = report.kinds(category)
        if kinds:
            first = report.first(category)
            print(f"{category}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                  + f" (e.g. {first.source}: {first.detail})")
    print(f"lists: {out / LIST_FOLDER}; report: {out / 'prepare_report.txt'}")
