"""BERT: masked-LM pretraining, then --finetune on a labelled task (sentiment or paraphrase).

python experiments/train_bert.py --preset bert-small                      # MLM pretraining
python experiments/build_tasks.py --task sentiment                        # build the task once
python experiments/train_bert.py --preset bert-small --finetune --task sentiment
"""

import sys

from cottention_jax.cli import train_cli

if __name__ == "__main__":
    train_cli(sys.argv[1:], description=__doc__, default_preset="bert-small", kinds=("bert-mlm",), finetune=True)
