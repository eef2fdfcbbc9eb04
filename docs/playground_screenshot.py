"""Takes docs/playground.png: the playground page in headless Chromium after a generation.

No GPT-2 weights can be downloaded here, and a random model writes noise, so this first trains a
tiny GPT-2 (2 layers, 128 wide, the tests' 700-token byte-level BPE) for a few minutes on the prose of
Python's own reference documentation (``pydoc_data``, shipped with every Python). It then serves it
with ``gpt2gen serve``'s app, generates in the page and hovers a token to show its alternatives.

    pip install ".[serve,test,reference]" selenium     # and: apt-get install chromium chromium-driver
    python docs/playground_screenshot.py [--steps 300] [--out docs/playground.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' checkpoint writer and server runner

import numpy as np  # noqa: E402
import torch  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import gpt2gen  # noqa: E402
from conftest import make_random_gpt2  # noqa: E402
from gpt2gen.server import ServerConfig, create_app  # noqa: E402
from serving import running, wait_healthy  # noqa: E402

PROMPT = "The for statement is used to"
SEED = 5


def corpus() -> str:
    """The prose paragraphs of Python's reference documentation (no grammar, code or headings)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for text in topics.values():
        for paragraph in text.split("\n\n"):
            lines = paragraph.strip("\n").splitlines()
            if len(lines) >= 2 and all(line[:1].isalpha() or line[:1] in "\"(" for line in lines):
                paragraphs.append(" ".join(lines))
    return "\n\n".join(paragraphs)


def train(root: Path, steps: int) -> Path:
    model_dir, model = make_random_gpt2(root, n_layer=2, n_embd=128, n_head=4, vocab_size=700,
                                        n_positions=256, initializer_range=0.02, name="pydoc")
    ids = np.array(gpt2gen.GPT2.from_pretrained(model_dir).encode(corpus()), dtype=np.int64)
    print(f"training on {len(ids)} tokens for {steps} steps", file=sys.stderr)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # beside other work, one thread ran a step 6x faster than two here
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(ids) - 129, size=32)
        batch = torch.from_numpy(np.stack([ids[s:s + 128] for s in starts]))
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", file=sys.stderr)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def screenshot(model_dir: Path, out: Path) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1120,700",
                "--hide-scrollbars", "--force-color-profile=srgb"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"),
                              options=options)
    model = gpt2gen.GPT2.from_pretrained(model_dir)
    try:
        with running(create_app(model, ServerConfig(served_model_name="gpt2-tiny-pydoc"))) as url:
            wait_healthy(url)
            driver.get(f"{url}/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "gpt2-tiny-pydoc" in d.find_element(By.ID, "server-status").text)
            for name, value in (("prompt", PROMPT), ("max_tokens", "90"), ("temperature", "0.7"),
                                ("seed", str(SEED))):
                field = driver.find_element(By.ID, name)
                field.clear()
                field.send_keys(value)
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.find_element(By.ID, "complete-stats").get_attribute("data-done"))
            # hover a token the model hesitated over, so the tip has several real alternatives
            spans = driver.find_elements(By.CSS_SELECTOR, "#completion .tok")
            logprobs = [float(s.get_attribute("data-logprob")) for s in spans]
            middle = range(len(spans) // 4, len(spans) // 2)
            pick = min(middle, key=lambda i: abs(logprobs[i] - np.log(0.3)))
            ActionChains(driver).move_to_element(spans[pick]).perform()
            time.sleep(0.3)
            driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "playground.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        screenshot(train(Path(root), args.steps), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
