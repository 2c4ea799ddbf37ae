"""FreezeCallback in TRL's SFTTrainer: FreezeOut on a tiny GPT-2 fine-tuned on prompt-completion
pairs, half of the block matrices frozen by the middle of training. Runs on a CPU in seconds:

    python docs/examples/trl_callback.py
"""

import tempfile

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel
from trl import SFTConfig, SFTTrainer

from deadzone.integrations.transformers import FreezeCallback
from deadzone.models.pretraining import train_tokenizer
from deadzone.training.freezing import optimizer_state_bytes

pairs = [(f"def times_{i}(x):\n", f"    return x * {i}\n") for i in range(64)]
data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
tokenizer = train_tokenizer([p + c for p, c in pairs], vocab_size=300)  # any tokenizer will do
torch.manual_seed(0)
config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=len(tokenizer), n_positions=32)
model = GPT2LMHeadModel(config)

callback = FreezeCallback("freezeout", target_fraction=0.5, freeze_by=0.5)
with tempfile.TemporaryDirectory() as out:
    args = SFTConfig(
        output_dir=out, max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
        max_length=32, save_strategy="no", report_to="none", use_cpu=True, logging_steps=10,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer,
        callbacks=[callback],
    )  # fmt: skip
    trainer.train()

total = sum(p.numel() for p in model.parameters())
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
for step, units in callback.timeline:
    print(f"step {step:>2}: {len(units)} units frozen")
print(f"trainable at the end: {trainable:,} of {total:,}")
print(f"optimizer state at the end: {optimizer_state_bytes(trainer.optimizer):,} bytes")
