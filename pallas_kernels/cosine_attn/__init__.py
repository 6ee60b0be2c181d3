"""Causal cosine / linear attention: the float32 spec, a chunked jnp scan, and Pallas GPU and TPU kernels.

One function per form: reference.causal_linear_attention_reference, xla.causal_linear_attention_xla,
pallas.causal_linear_attention_pallas, pallas_tpu.causal_linear_attention_pallas_tpu (same arguments,
same results).

reference.py  the quadratic float32 specification (the truth every other form is tested against)
xla.py        chunked prefix sum in jnp (every chunk state at once) with a custom_vjp (any backend)
pallas.py     the same chunked algorithm as Pallas (Triton) GPU kernels (_kernels.py: their bodies)
pallas_tpu.py the same algorithm as Pallas TPU (Mosaic) kernels, state in VMEM (_tpu_kernels.py: their bodies)
launch_table.py  the kernels' tuned launch parameters by device, dtype and head dim (a JSON table)
tune.py       measures those parameters on a GPU or a TPU (experiments/tune_kernels.py)
"""
