"""The recipes shipped with hf-distill (installed as the package ``hf_distill.recipes_data``)."""
