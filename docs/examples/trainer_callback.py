"""FreezeCallback in a Hugging Face Trainer: FreezeOut on a tiny GPT-2, half of the block
matrices frozen by the middle of training. Runs on a CPU in a few seconds:

    python docs/examples/trainer_callback.py
"""

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from deadzone.integrations.transformers import FreezeCallback
from deadzone.training.freezing import optimizer_state_bytes

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=256, n_positions=32))
ids = torch.randint(0, 256, (64, 32))
data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]

callback = FreezeCallback("freezeout", target_fraction=0.5, freeze_by=0.5)
with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(
        output_dir=out, max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
        save_strategy="no", report_to="none", use_cpu=True, logging_steps=10, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

total = sum(p.numel() for p in model.parameters())
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
for step, units in callback.timeline:
    print(f"step {step:>2}: {len(units)} units frozen")
print(f"trainable at the end: {trainable:,} of {total:,}")
print(f"optimizer state at the end: {optimizer_state_bytes(trainer.optimizer):,} bytes")
