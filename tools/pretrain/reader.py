"""Pretrains the demo's base model: a small Idefics2 that reads the synthetic `tiny` cards.

`ledger demo` fine-tunes a base that can read and answer questions about a card but has never been
asked for JSON: this script trains transformers' Idefics2ForConditionalGeneration on two tasks,
on cards drawn by `ledger synth --with-text`:
- transcription ("Read the text." -> every line printed on the card, in drawing order);
- field questions (`--qa`: "What is the total?" -> "1195.22"), up to `--turns` per card, one per
  conversation turn, the way a chat model is asked about a document.
The layout families the demo evaluates on (every `-d` family) are held out of the corpus, so the
base never sees them. The result is saved as a Hugging Face model directory (config, safetensors,
tokenizer, processor files) that `ledger model pin` accepts. `tools/pretrain/make_reader.sh` runs
it with the committed settings, in stages (`--init` continues from a saved stage).

Needs torch, transformers 5.x, tokenizers, safetensors, pillow (PyPI). Seeded; not bit-reproducible
across machines or thread counts.

What it takes to make a 2M-parameter Idefics2 learn to read on 2 CPU cores (found the hard way):
- Initialization for this width (`fan_in_init`). transformers' std 0.02 everywhere suits 4096-wide
  models; at width 128 each linear shrinks its output ~4x and the page all but vanishes on its way
  to the logits: with it, not even one 56-px digit per page was learned in 1,000 steps; with it
  fixed, that probe is solved in 300. Perceiver latents are random (transformers sets them all to
  ones), patch positions get a unit-scale 2-D sine/cosine code (std 0.02 made them invisible).
- Guided attention. Even so, reading a line of digits sat at the cost of unread digits for 1,000
  steps: nothing tells the model where each character is (the same alignment problem text-to-speech
  models have, solved there by a guided-attention loss). Here the synth's character centres
  (`--with-text` writes them) give two auxiliary losses, used only during pretraining:
  * the perceiver's latents form a grid over the page (latent r*C+c is pulled to the patches of
    cell (r, c)), so the image tokens are the page in reading order;
  * one head per text layer (after the first) is pulled to the image token of the character it is
    about to write.
  The saved model is a plain Idefics2; the losses leave nothing behind but what they taught.

Results (29 Nov 2026, 2 cores; the stages are in make_reader.sh; validation = 32-64 new cards of
the pretraining corpus, free and a-c mixed):
1. transcription from random weights, a-c families, 4,000 steps of 16 cards in 42 min (0.63 s/step):
   loss 3.9 -> 0.003, transcription exact 0.00 (step 500) -> 0.50 (2,000) -> 1.00 (4,000, 64/64).
   It did not read invoice-d: every family has a fixed arrangement, so it had learned templates.
2. + freely arranged cards and one-field questions (half the examples), 2,500 steps, 14 min:
   field answers 0.77, transcription 0.55 (free cards are harder).
3. 4,000 more steps, fresh corpus, 60% questions, 22 min: field answers 0.93, transcription 0.77.
4. 4,000 more steps, fresh corpus, 70% questions, up to three per card in turns, 30 min: field
   answers 0.995, transcription 0.83. On 200 new invoices (a-c: 168, held-out d: 32), in PyTorch:
   a-c transcription 167/168 and answers 502/504; on invoice-d answers 95/96 (date 32, number 31,
   total 32), transcription 0/32 (it never saw the labels `#`, `Day`, `Amt` and writes labels it
   knows instead).
The demo's JSON fine-tune on cards of only the a-c layouts did not carry this over to invoice-d,
whatever the stage (field exact match 0.26-0.44 on invoice-d); fine-tuning on freely arranged
cards did (0.88 from stage 4 after 1,000 steps, 0.945 from the final model; see the README).
"""
import argparse
import glob
import json
import math
import os
import random
import re
import shutil
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "ml/idefics2/fixtures/tiny")
IMAGE_TOKEN = 4
EOU = 5
PAD = 6
READ_PROMPT = "Read the text."
WIDTH, HEIGHT, PATCH = 160, 96, 8


def rows(data_root, split):
    out = []
    for path in sorted(glob.glob(os.path.join(data_root, "data", f"{split}-*.jsonl"))):
        with open(path) as f:
            out += [json.loads(l) for l in f if l.strip()]
    return out


def load_pixels(data_root, row):
    """The page as uint8 gray (the cards are gray; the model sees it as RGB)."""
    img = Image.open(os.path.join(data_root, "data", row["image"])).convert("L")
    if img.size != (WIDTH, HEIGHT):
        raise SystemExit(f"{row['image']}: {img.size}, expected {(WIDTH, HEIGHT)}")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def to_model(gray):
    """uint8 [b, h, w] -> the processor's normalized RGB [b, 1, 3, h, w] (rescale, mean 0.5, std 0.5)."""
    x = gray.float() / 255.0
    x = (x - 0.5) / 0.5
    return x.unsqueeze(1).unsqueeze(2).expand(-1, 1, 3, -1, -1).contiguous()


def make_config(a):
    cfg = Idefics2Config(
        vision_config=dict(hidden_size=a.vision_hidden, intermediate_size=2 * a.vision_hidden,
                           num_hidden_layers=a.vision_layers, num_attention_heads=4,
                           image_size=WIDTH, patch_size=PATCH, hidden_act="gelu_pytorch_tanh"),
        perceiver_config=dict(hidden_act="silu", hidden_size=a.text_hidden, rms_norm_eps=1e-5,
                              resampler_n_latents=a.grid_rows * a.grid_cols, resampler_depth=2,
                              resampler_n_heads=4, resampler_head_dim=32, num_key_value_heads=2),
        text_config=dict(model_type="mistral", vocab_size=420, hidden_size=a.text_hidden,
                         intermediate_size=2 * a.text_hidden, num_hidden_layers=a.text_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=a.text_hidden // 4,
                         max_position_embeddings=512, rms_norm_eps=1e-5, sliding_window=4096,
                         pad_token_id=PAD, bos_token_id=1, eos_token_id=2),
        image_token_id=IMAGE_TOKEN,
        tie_word_embeddings=False,
    )
    return cfg


def fan_in_init(model):
    """Re-initializes for training from scratch at this width (see the module doc)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                mod.weight.normal_(0.0, mod.weight[0].numel() ** -0.5)
                if mod.bias is not None:
                    mod.bias.zero_()
        model.model.connector.perceiver_resampler.latents.normal_(0.0, 1.0)
        pos = model.model.vision_model.embeddings.position_embedding.weight
        side = int(round(pos.shape[0] ** 0.5))
        quarter = pos.shape[1] // 4
        freq = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
        idx = torch.arange(pos.shape[0])
        r = (idx // side).float()[:, None] * freq[None, :]
        c = (idx % side).float()[:, None] * freq[None, :]
        code = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)
        pos.zero_()
        pos[:, : code.shape[1]] = code


class Guide:
    """The guided-attention losses: captures attention weights with forward hooks."""

    def __init__(self, model, a):
        self.a = a
        self.perceiver = []
        self.text = []
        for layer in model.model.connector.perceiver_resampler.layers:
            layer.self_attn.register_forward_hook(lambda m, i, o: self.perceiver.append(o[1]))
        for k, layer in enumerate(model.model.text_model.layers):
            if k >= 1:
                layer.self_attn.register_forward_hook(lambda m, i, o: self.text.append(o[1]))
        gr, gc = a.grid_rows, a.grid_cols
        pr, pc = HEIGHT // PATCH, WIDTH // PATCH
        # Cell (r, c) of the latent grid covers these patches.
        region = torch.zeros(gr * gc, pr * pc)
        for r in range(gr):
            for c in range(gc):
                for y in range(r * pr // gr, (r + 1) * pr // gr):
                    for x in range(c * pc // gc, (c + 1) * pc // gc):
                        region[r * gc + c, y * pc + x] = 1.0
        self.region = region

    def cell(self, x, y):
        a = self.a
        r = min(max(int(y * a.grid_rows / HEIGHT), 0), a.grid_rows - 1)
        c = min(max(int(x * a.grid_cols / WIDTH), 0), a.grid_cols - 1)
        return r * a.grid_cols + c

    def clear(self):
        self.perceiver.clear()
        self.text.clear()

    def loss(self, targets, image_start):
        """targets: [b, s] latent index each query position should read (-1: none)."""
        eps = 1e-6
        n_patches = self.region.shape[1]
        lp = 0.0
        for w in self.perceiver:  # [b, h, latents, patches + latents]
            mass = (w[..., :n_patches].mean(1) * self.region).sum(-1)  # [b, latents]
            lp = lp - torch.log(mass + eps).mean()
        lp = lp / max(len(self.perceiver), 1)
        lt = 0.0
        sel = targets >= 0
        if sel.any():
            b_idx, q_idx = sel.nonzero(as_tuple=True)
            keys = image_start + targets[b_idx, q_idx]
            for w in self.text:  # [b, h, q, k]
                head = w[:, 0]
                lt = lt - torch.log(head[b_idx, q_idx, keys] + eps).mean()
            lt = lt / max(len(self.text), 1)
        return lp, lt


def question(key):
    """The field question the base is pretrained to answer (never JSON: that is the fine-tune's job)."""
    return f"What is the {key.replace('_', ' ')}?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+", help="`ledger synth --with-text` output directories")
    ap.add_argument("--init", default=None, help="continue from this saved model instead of random weights")
    ap.add_argument("--qa", type=float, default=0.0,
                    help="fraction of examples that ask for one field's value instead of the transcription")
    ap.add_argument("--turns", type=int, default=1,
                    help="a question example asks up to this many fields, one per conversation turn")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid-rows", type=int, default=6)
    ap.add_argument("--grid-cols", type=int, default=20)
    ap.add_argument("--vision-hidden", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=3)
    ap.add_argument("--text-hidden", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--guide", type=float, default=1.0, help="weight of the guided-attention losses")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=400)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    random.seed(0)
    tok = Tokenizer.from_file(os.path.join(TINY, "tokenizer.json"))
    n_latents = a.grid_rows * a.grid_cols
    if a.init:
        model = Idefics2ForConditionalGeneration.from_pretrained(a.init, attn_implementation="eager")
    else:
        model = Idefics2ForConditionalGeneration._from_config(make_config(a), attn_implementation="eager")
        fan_in_init(model)
    guide = Guide(model, a)
    print("params", sum(p.numel() for p in model.parameters()), flush=True)

    train, test = [], []
    for d in a.data:
        tr, va = rows(d, "train"), rows(d, "validation")[:200]
        if not tr or "centres" not in tr[0]:
            raise SystemExit(f"{d}: no train rows with `text` and `centres` (synthesize with --with-text)")
        for r in tr + va:
            r["px"] = load_pixels(d, r)
        train += tr
        test += va
    random.shuffle(test)
    print("train", len(train), "layouts", sorted({r["layout"] for r in train}), flush=True)

    # The exact prompts the engine builds (chat template + Idefics2Processor's image expansion).
    processor = Idefics2Processor.from_pretrained(TINY, image_seq_len=n_latents)
    prefixes = {}

    def prefix_of(prompt):
        if prompt not in prefixes:
            chat = f"User:<image>{prompt}<end_of_utterance>\nAssistant:"
            prefixes[prompt] = processor(
                text=[chat], images=[[Image.new("RGB", (WIDTH, HEIGHT), "white")]],
                return_tensors="pt")["input_ids"][0].tolist()
        return prefixes[prompt]

    image_start = prefix_of(READ_PROMPT).index(IMAGE_TOKEN)

    def located(r, key):
        """(question, value, index in `text` of the value's first character)."""
        value = r["target"][key]
        at = re.search(r"(?<!\S)" + re.escape(value) + r"(?!\S)", r["text"])
        if at is None:
            raise SystemExit(f"{r['image']}: {key} {value!r} is not a word of the transcription")
        return question(key), value, at.start()

    def task(r, qa):
        """The turns of one example: [(prompt, answer, index in `text` of the answer's first
        character)]. A question example asks 1..--turns of the card's fields, one per turn."""
        if not qa:
            return [(READ_PROMPT, r["text"], 0)]
        keys = sorted(r["target"])
        random.shuffle(keys)
        return [located(r, k) for k in keys[: random.randint(1, min(a.turns, len(keys)))]]

    def answer_tokens(r, answer, at):
        """Token ids of " answer" and, per token, the latent its first character sits on (or -1)."""
        s = " " + answer
        enc = tok.encode(s, add_special_tokens=False)
        # Index in `centres` of each character of s (line breaks and the leading space have none).
        centre_of, k = [-1] * len(s), at - r["text"][:at].count("\n")
        for i, ch in enumerate(s):
            if i > 0 and ch != "\n":
                centre_of[i] = k
                k += 1
        cells = []
        for start, end in enc.offsets:
            chars = [i for i in range(start, end) if not s[i].isspace() and centre_of[i] >= 0]
            cells.append(guide.cell(*r["centres"][centre_of[chars[0]]]) if chars else -1)
        return enc.ids, cells

    def encode(r, turns):
        ids, labels, targets = [], [], []
        for n, (prompt, answer, at) in enumerate(turns):
            if n == 0:
                head = prefix_of(prompt)
            else:
                head = (tok.encode(f"\nUser: {prompt}", add_special_tokens=False).ids + [EOU]
                        + tok.encode("\nAssistant:", add_special_tokens=False).ids)
            ans, cells = answer_tokens(r, answer, at)
            base = len(ids) + len(head)
            ids += head + ans + [EOU]
            labels += [-100] * len(head) + ans + [EOU]
            targets += [-1] * (len(head) + len(ans) + 1)
            # The position before each answer token predicts it: guide that position's head.
            for j, c in enumerate(cells):
                targets[base + j - 1] = c
        return ids, labels, targets

    def batch(rs):
        exs = [encode(r, task(r, random.random() < a.qa)) for r in rs]
        n = max(len(e[0]) for e in exs)
        ids = torch.full((len(exs), n), PAD, dtype=torch.long)
        lab = torch.full((len(exs), n), -100, dtype=torch.long)
        tgt = torch.full((len(exs), n), -1, dtype=torch.long)
        att = torch.zeros((len(exs), n), dtype=torch.long)
        for k, (i, l, t) in enumerate(exs):
            ids[k, : len(i)] = torch.tensor(i)
            lab[k, : len(l)] = torch.tensor(l)
            tgt[k, : len(t)] = torch.tensor(t)
            att[k, : len(i)] = 1
        return ids, att, lab, tgt, to_model(torch.stack([r["px"] for r in rs]))

    @torch.no_grad()
    def answers(rs, prompt):
        prefix = prefix_of(prompt)
        ids = torch.tensor([prefix] * len(rs))
        pv = to_model(torch.stack([r["px"] for r in rs]))
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                             max_new_tokens=64, do_sample=False, eos_token_id=EOU, pad_token_id=PAD)
        guide.clear()
        return [tok.decode(o[len(prefix):].tolist(), skip_special_tokens=True).strip() for o in out]

    @torch.no_grad()
    def accuracy(rs):
        """Transcription exact match, character accuracy, and field-question exact match."""
        model.eval()
        ok, chars, chars_ok = 0, 0, 0
        for r, text in zip(rs, answers(rs, READ_PROMPT)):
            ok += text == r["text"]
            chars += len(r["text"])
            chars_ok += sum(x == y for x, y in zip(text, r["text"]))
        by_key = {}
        for r in rs:
            for key in r["target"]:
                by_key.setdefault(key, []).append(r)
        qa_ok, qa_n = 0, 0
        for key, group in sorted(by_key.items()):
            for r, got in zip(group, answers(group, question(key))):
                qa_ok += got == r["target"][key]
                qa_n += 1
        model.train()
        return ok / len(rs), chars_ok / max(chars, 1), qa_ok / max(qa_n, 1)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    total = a.max_steps or 10**9

    def lr_at(s):
        if s < a.warmup:
            return (s + 1) / a.warmup
        if a.max_steps:
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - a.warmup) / max(1, total - a.warmup))))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.time()
    step = 0
    avg = None
    model.train()
    if a.init:
        em, ch, qa = accuracy(test[:32])
        print(f"  start: validation exact {em:.2f} chars {ch:.3f} fields {qa:.2f}", flush=True)
    while time.time() - start < a.minutes * 60 and step < total:
        ids, att, lab, tgt, pv = batch(random.sample(train, a.batch))
        guide.clear()
        ce = model(input_ids=ids, attention_mask=att, pixel_values=pv, labels=lab).loss
        lp, lt = guide.loss(tgt, image_start)
        loss = ce + a.guide * (lp + lt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        now = torch.tensor([ce.item(), float(lp), float(lt)])
        avg = now if avg is None else 0.95 * avg + 0.05 * now
        if step % 50 == 0:
            print(f"step {step} ce {avg[0]:.4f} perceiver {avg[1]:.3f} text {avg[2]:.3f} "
                  f"lr {sched.get_last_lr()[0]:.2e} {time.time() - start:.0f}s", flush=True)
        if step % a.eval_every == 0:
            em, ch, qa = accuracy(random.sample(test, 32))
            print(f"  validation: exact {em:.2f} chars {ch:.3f} fields {qa:.2f}", flush=True)
            if a.out:
                save(model, a, step, em, ch, qa, n_latents)
    em, ch, qa = accuracy(test[:64])
    print(f"final step {step} ({time.time() - start:.0f}s): validation exact {em:.3f} chars {ch:.3f} "
          f"fields {qa:.3f}", flush=True)
    if a.out:
        save(model, a, step, em, ch, qa, n_latents)


def save(model, a, step, em, ch, qa, n_latents):
    os.makedirs(a.out, exist_ok=True)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(a.out, safe_serialization=True)
    model.config._attn_implementation = "eager"  # training goes on reading attention weights
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(TINY, f), os.path.join(a.out, f))
    with open(os.path.join(TINY, "preprocessor_config.json")) as f:
        pre = json.load(f)
    pre["size"] = {"shortest_edge": HEIGHT, "longest_edge": WIDTH}
    with open(os.path.join(a.out, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)
    with open(os.path.join(a.out, "processor_config.json"), "w") as f:
        json.dump({"image_seq_len": n_latents, "processor_class": "Idefics2Processor"}, f, indent=2)
    with open(os.path.join(a.out, "pretraining.json"), "w") as f:
        json.dump({"tasks": [READ_PROMPT] + ([question("<field>")] if a.qa else []), "steps": step,
                   "args": vars(a), "validation_exact": em, "validation_chars": ch,
                   "validation_fields": qa}, f, indent=2)


if __name__ == "__main__":
    main()
