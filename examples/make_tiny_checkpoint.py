"""Write a tiny random Pythia-shaped checkpoint, to try pythia-tl without Hub access.

    python examples/make_tiny_checkpoint.py tiny-pythia
    pythia-tl convert tiny-pythia -o tiny-pythia.safetensors

The folder gets a real GPT-NeoX config.json and float16 weights in the layout you choose, with
the same tensor names and shapes as a Pythia checkpoint on the Hub (only smaller), and a tiny
word-level tokenizer (a few common English words) whose ids fit the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The random Pythia-shaped checkpoints come from the tests' fixture module.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import LAYOUTS, PYTHIA_SHAPES, PythiaShape, write_checkpoint
from tiny_tokenizer import write_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layout", choices=LAYOUTS, default="safetensors")
    parser.add_argument(
        "--size",
        choices=["tiny", *PYTHIA_SHAPES],
        default="tiny",
        help="tiny (2 layers, d_model 64) or a real Pythia size (random weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = (
        PythiaShape(n_layers=2, d_model=64, n_heads=4, d_vocab=512)
        if args.size == "tiny"
        else PYTHIA_SHAPES[args.size]
    )
    args.folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(args.folder, shape, layout=args.layout, seed=args.seed)
    write_tokenizer(args.folder, shape.d_vocab)
    print(f"wrote a random {args.size} checkpoint ({args.layout}) to {args.folder}")


if __name__ == "__main__":
    main()
