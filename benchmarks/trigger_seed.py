"""Is a BadNet run's implant decided by its trigger's draw or by its training? (docs/attacks.md, "The first grid's
miss: a trigger drawn from the run's seed").

``recipes/poison_clip.py --attack badnet --target eight`` (4-pixel noise patch, bottom right, 5% poisoned) with the
run seed and the trigger varied one at a time around the first grid's one miss (run seed 3 with the trigger of seed
3, the darkest 4-pixel draw of seeds 0-4):

* run seed 3, the patch varied: trigger seeds 0-4, and seed 3's draw inverted (``1 - p``) and brightened
  (``0.5 + p / 2``), the last two passed with ``--pattern`` as 8-bit RGB PNGs (the same layout of light and dark,
  more contrast with the digits' black corners);
* seed 3's dark patch on other run seeds (0, 1, 2): other data orders, poisoned pairs and initialisations.

    python benchmarks/trigger_seed.py --jobs 2     # 10 runs, about 8 min on 2 cores; results/trigger_seed.csv

Models are cached (and resumed) under ``--zoo-dir``/``trigger_seed``/NAME.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402  (the zoo's cached, resumable runner)

from clipclean.fileio import write_csv  # noqa: E402
from clipclean.triggers import PatchBlendTrigger  # noqa: E402

IMAGE_SIZE, SIZE = 32, 4  # the recipe's BadNet patch at 32 px
DARK = 3  # the trigger seed of the first grid's miss
COLUMNS = ("name", "seed", "trigger_seed", "patch", "patch_mean", "ca", "asr", "partial_backdoor")
# (name, run seed, trigger seed, how the patch is made from that seed's draw p)
RUNS = (
    *((f"s3_t{t}", 3, t, "as drawn") for t in range(5)),
    ("s3_t3_inverted", 3, DARK, "inverted"),
    ("s3_t3_brightened", 3, DARK, "brightened"),
    *((f"s{s}_t3", s, DARK, "as drawn") for s in (0, 1, 2)),
)
TRANSFORMS = {"as drawn": lambda p: p, "inverted": lambda p: 1 - p, "brightened": lambda p: 0.5 + p / 2}


def patch(trigger_seed: int, how: str) -> np.ndarray:
    """The ``(3, SIZE, SIZE)`` patch of a run: the trigger seed's noise draw, transformed (8-bit where it goes to a
    PNG, as the run reads it)."""
    drawn = PatchBlendTrigger.patch(IMAGE_SIZE, SIZE, pattern="noise", seed=trigger_seed).patch_pattern.detach()
    values = TRANSFORMS[how](drawn).numpy()
    return values if how == "as drawn" else np.round(values * 255) / 255


def run(root: Path, name: str, seed: int, trigger_seed: int, how: str) -> dict:
    arguments = ["--attack", "badnet", "--target", "eight", "--seed", str(seed), "--trigger-seed", str(trigger_seed)]
    if how != "as drawn":
        png = root / f"{name}.png"
        pixels = np.round(patch(trigger_seed, how).transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(png)
        arguments += ["--pattern", str(png)]
    results = zoo.run_script("recipes/poison_clip.py", arguments, root / name)
    return {
        "name": name,
        "seed": seed,
        "trigger_seed": trigger_seed,
        "patch": how,
        "patch_mean": round(float(patch(trigger_seed, how).mean()), 3),
        "ca": results["clean_accuracy"],
        "asr": results["attack_success_rate"],
        "partial_backdoor": results.get("partial_backdoor"),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo-dir", default=str(Path.home() / ".cache" / "clipclean" / "zoo"))
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one CPU thread each)")
    args = parser.parse_args(argv)
    root = Path(args.zoo_dir).expanduser() / "trigger_seed"
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda spec: run(root, *spec), RUNS))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "trigger_seed.csv", rows, COLUMNS)
    print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
