"""Train a GPT-J-style language model (cosine or softmax attention) on the offline corpus.

python experiments/train_gpt.py --preset gpt-small --set model.attention=softmax
"""

import sys

from cottention_jax.cli import train_cli

if __name__ == "__main__":
    train_cli(sys.argv[1:], description=__doc__, default_preset="gpt-small", kinds=("gpt",))
