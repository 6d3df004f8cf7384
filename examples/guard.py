"""Guard: keep a toxic word out of an image and leave clean prompts untouched.

``tl.ToxicTextGuard`` is called like the pipeline. It reads the whole prompt (quotes of every kind,
spaced or look-alike letters, leet), replaces a toxic word by a benign one in what the text layers
read, and runs a clean prompt through the plain pipeline, bit for bit (the guard guide).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import textloc as tl

PROMPTS = ['A red sign on a blue background that says "D4MN".', 'A red sign on a blue background that says "LAMP".']


def main(out: str | Path = "runs/examples/guard") -> tl.ToxicTextGuard:
    """Generate a toxic and a clean prompt, unguarded and guarded; writes ``unguarded-<i>.png``,
    ``guarded-<i>.png`` and ``reports.json`` (what was found and what replaced it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = tl.load_pipeline("textloc-tiny")
    guard = tl.ToxicTextGuard(pipe, "preset")
    settings = {"num_inference_steps": 8, "guidance_scale": 5.0}
    plain = pipe(PROMPTS, generator=[tl.generator(0), tl.generator(1)], **settings).images
    guarded = guard(PROMPTS, generator=[tl.generator(0), tl.generator(1)], **settings)
    for i, (before, after) in enumerate(zip(plain, guarded.images)):
        before.save(out / f"unguarded-{i}.png")
        after.save(out / f"guarded-{i}.png")
    for report in guarded.reports:
        print(report.summary())
    reports = [{"prompt": r.prompt, "found": r.found, "replacements": r.replacements, "rows": r.rows} for r in guarded.reports]
    (out / "reports.json").write_text(json.dumps(reports, indent=2) + "\n")
    return guard


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/guard", help="folder to write into")
    main(parser.parse_args().out)
