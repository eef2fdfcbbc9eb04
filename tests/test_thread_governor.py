"""The adaptive thread count: the governor's choices on synthetic step times, and results that do
not change when it varies the thread count under a competing busy process."""

import os
import subprocess
import sys

import numpy as np

import gpt2gen
from conftest import make_numpy_gpt2
from gpt2gen import GPT2, _testing

# Step times (s) of the 124M shape on this 2-core machine: 1 thread ~12 ms, 2 threads 7.7 ms
# quiet and ~33 ms with a busy process beside them (1 thread keeps its quiet time).
QUIET = {1: 0.012, 2: 0.0077}
LOADED = {1: 0.012, 2: 0.033}


def drive(governor, times, steps, rows=1, allowed=2):
    """The counts chosen for `steps` steps whose time is times(threads, step)."""
    chosen = []
    for step in range(steps):
        n = governor.choose(rows, allowed)
        governor.record(rows, n, times(n, step))
        chosen.append(n)
    return chosen


def table(t):
    return lambda n, step: t[n]


def test_a_quiet_machine_keeps_every_thread_and_probes_rarely():
    governor = _testing.ThreadGovernor()
    chosen = drive(governor, table(QUIET), 1000)
    assert governor.current == 2
    # One early probe, the next 64 steps later, then backing off to one per 256 steps: a 64-token
    # call pays for one probe (~half a step), a long one for ~0.2% of its time.
    assert chosen[:66].count(1) == 1, chosen[:66]
    probes = chosen.count(1)
    assert 2 <= probes <= 1000 // 256 + 3, probes
    # So rare a probe does not slow the noticing of a competitor: its steps are slower at once.
    arrived = drive(governor, table(LOADED), 50)
    switched = next(i for i in range(len(arrived)) if arrived[i:i + 10] == [1] * 10)
    assert switched <= 6, arrived[:20]


def test_a_busy_competitor_is_noticed_within_a_few_steps_and_its_leaving_too():
    governor = _testing.ThreadGovernor()
    drive(governor, table(QUIET), 200)
    assert governor.current == 2
    arrived = drive(governor, table(LOADED), 300)
    switched = next(i for i in range(len(arrived)) if arrived[i:i + 10] == [1] * 10)
    assert switched <= 6, arrived[:20]
    # Loaded: mostly one thread, with rare probes at two.
    assert arrived[50:].count(2) <= 250 // 64 + 2
    left = drive(governor, table(QUIET), 300)
    back = next(i for i in range(len(left)) if left[i:i + 10] == [2] * 10)
    # Within one probe interval: a 2-thread probe beside the competitor lost by 1.75 steps, so the
    # next waits 1.75 / 2% = 87 steps (probes cost at most 2% of the time).
    assert back <= 90, left[:100]
    assert governor.current == 2


def test_a_governor_started_on_a_busy_machine_drops_to_one_thread_at_its_first_probe():
    governor = _testing.ThreadGovernor()
    chosen = drive(governor, table(LOADED), 100)
    assert chosen[:2] == [2, 2] and chosen[2] == 1  # two steps to compare with, then a probe
    assert chosen[3] == 2  # the step that confirms the probe's win
    assert governor.current == 1 and chosen[4:11] == [1] * 7


def test_a_move_on_one_lucky_probe_is_taken_back():
    governor = _testing.ThreadGovernor()
    lucky = iter([0.005])  # the first 1-thread step is fast, the next ones are not
    chosen = drive(governor, lambda n, s: next(lucky, QUIET[1]) if n == 1 else QUIET[2], 300)
    assert chosen[2:4] == [1, 2]  # the probe, and the step at two threads it still beats
    assert chosen[4:7] == [1, 1, 1] and chosen[7:11] == [2, 2, 2, 2]  # 3 steps confirm or not
    assert chosen[7:].count(1) <= 300 // 64 + 1  # and it probes less often after that
    assert governor.current == 2


def test_a_probe_that_wins_only_against_a_noisy_moment_does_not_move():
    # A neighbour's burst slows two 2-thread steps 2x; the 1-thread probe it triggers beats them,
    # but not the next 2-thread step, once the burst is over.
    def times(n, step):
        burst = 200 <= step < 202
        return QUIET[n] * (2 if burst and n == 2 else 1)

    governor = _testing.ThreadGovernor()
    chosen = drive(governor, times, 300)
    assert chosen[200:202] == [2, 2] and chosen[202:204] == [1, 2]  # the probe, then it stays
    assert chosen[204:210].count(1) == 1  # the probe is repeated once, and loses
    assert chosen[210:].count(1) <= 90 // 64 + 1
    assert governor.current == 2


def test_it_starts_from_a_first_guess():
    governor = _testing.ThreadGovernor(first_guess=1)
    chosen = drive(governor, table(LOADED), 100, allowed=4)
    assert chosen[:2] == [1, 1] and governor.current == 1
    assert drive(_testing.ThreadGovernor(first_guess=8), table(LOADED), 1, allowed=2) == [2]


def test_started_below_every_thread_on_a_quiet_machine_it_climbs_at_once():
    governor = _testing.ThreadGovernor(first_guess=1)
    chosen = drive(governor, table(QUIET), 20)
    assert chosen[:4] == [1, 1, 2, 1] and chosen[4:19] == [2] * 15  # probe, confirmation, moved
    assert governor.current == 2


def test_a_busy_machine_still_moves_when_the_step_after_a_probe_was_lucky():
    # The 2-thread step that should confirm the probe's win happens to run quiet.
    def times(n, step):
        return (QUIET if step == 3 else LOADED)[n]

    governor = _testing.ThreadGovernor()
    chosen = drive(governor, times, 60)
    assert chosen[:4] == [2, 2, 1, 2]  # a probe that wins, a step that does not confirm it
    assert chosen[4:10] == [2, 2, 2, 1, 2, 1]  # 4 steps later the probe again, now confirmed
    assert chosen[10:].count(2) <= 2 and governor.current == 1


def test_started_below_every_thread_its_first_probe_is_of_more():
    # 4 allowed, started at 2 (the last loop's choice), the machine now quiet: 4 threads are fastest.
    governor = _testing.ThreadGovernor(first_guess=2)
    chosen = drive(governor, lambda n, s: 0.1 / n, 40, allowed=4)
    assert chosen[:5] == [2, 2, 3, 2, 3] and governor.current == 4


def test_a_winning_probe_left_unpaired_is_repeated_once_then_counts_as_lost():
    # A server: a decode-size probe wins by luck, then prompt chunks (another size) fill the next
    # 20 steps, so no decode step comes to confirm it in time.
    def rows(step):
        return 256 if 3 <= step < 23 else 1

    governor = _testing.ThreadGovernor()
    chosen = []
    for step in range(100):
        n = governor.choose(rows(step), 2)
        t = 0.005 if step == 2 else {1: QUIET, 256: {1: 0.33, 2: 0.175}}[rows(step)][n]
        governor.record(rows(step), n, t)
        chosen.append(n)
    assert chosen[2] == 1 and chosen[3:].count(2) >= 97 - 4  # no move on the unconfirmed win
    assert 1 <= chosen[3:].count(1) <= 3  # the repeat, then probes as after a loss
    assert governor.current == 2


def test_a_slowdown_probes_fewer_threads_never_more():
    governor = _testing.ThreadGovernor(first_guess=1)
    assert drive(governor, table(LOADED), 40).count(2) == 1  # its one probe, 2 steps in
    # Busier still: one thread slows down too; two would be slower yet.
    assert drive(governor, table({1: 0.03, 2: 0.08}), 40) == [1] * 40


def test_noise_within_the_margin_does_not_switch():
    governor = _testing.ThreadGovernor()
    rng = np.random.default_rng(0)
    # One thread only 5% slower than two, each step +-3%: a probe must win by 10% to switch.
    chosen = drive(governor, lambda n, s: (0.01 if n == 2 else 0.0105) * rng.uniform(0.97, 1.03), 500)
    assert chosen[-300:].count(2) >= 300 - 300 // 64 - 2
    assert governor.current == 2


def test_steps_are_compared_only_with_steps_of_their_size():
    # A quiet server: prompt chunks of 256 rows (175 ms at 2 threads) between decode steps
    # (7.7 ms): the big steps' times must not look like a slowdown of the small ones.
    def times(n, step):
        rows = 256 if step % 10 == 0 else 1
        return {256: {1: 0.33, 2: 0.175}, 1: QUIET}[rows][n]

    governor = _testing.ThreadGovernor()
    chosen = []
    for step in range(600):
        rows = 256 if step % 10 == 0 else 1
        n = governor.choose(rows, 2)
        governor.record(rows, n, times(n, step))
        chosen.append(n)
    assert governor.current == 2
    assert chosen.count(1) <= 600 // 64 * 2 + 6


def test_the_users_setting_is_the_most_it_uses():
    governor = _testing.ThreadGovernor()
    # Faster with every thread: it never goes beyond what is allowed.
    assert set(drive(governor, lambda n, s: 0.1 / n, 200, allowed=3)) <= {2, 3}
    assert governor.current == 3
    assert drive(governor, lambda n, s: 0.1 / n, 50, allowed=1) == [1] * 50
    # A new setting starts over from it.
    assert drive(governor, lambda n, s: 0.1 / n, 1, allowed=4) == [4]


def test_more_cores_it_climbs_down_to_the_free_ones():
    # 8 allowed, 4 of them busy: past 4 threads, steps wait at the barriers.
    def times(n, step):
        return 0.1 / min(n, 4) * (1 if n <= 4 else 3)

    governor = _testing.ThreadGovernor()
    drive(governor, times, 400, allowed=8)
    assert governor.current == 4


def test_adaptive_threads_can_be_turned_off():
    assert gpt2gen.adaptive_threads()
    try:
        gpt2gen.set_adaptive_threads(False)
        assert not gpt2gen.adaptive_threads()
    finally:
        gpt2gen.set_adaptive_threads(True)
    out = subprocess.run([sys.executable, "-c", "import gpt2gen; print(gpt2gen.adaptive_threads())"],
                         env={**os.environ, "GPT2GEN_ADAPTIVE_THREADS": "0"}, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["False"], out.stderr
    out = subprocess.run([sys.executable, "-c", "import gpt2gen"], capture_output=True, text=True,
                         env={**os.environ, "GPT2GEN_ADAPTIVE_THREADS": "no"}, timeout=60)
    assert out.returncode != 0 and "GPT2GEN_ADAPTIVE_THREADS must be 0 or 1, got 'no'" in out.stderr


BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


def test_results_are_unchanged_while_it_varies_the_thread_count_under_load(tmp_path):
    # Each new scheduler probes the other thread count at its third step (tested above), so every
    # generation below mixes 1- and 2-thread steps, more of them with the busy competitor.
    model_dir, _ = make_numpy_gpt2(tmp_path, n_layer=2, n_embd=256, n_head=4, vocab_size=2000,
                                   n_positions=600)
    text = "the quick brown fox jumps over the lazy dog " * 20
    options = dict(temperature=0.9, seed=3, logprobs=3, prompt_logprobs=2)
    before = gpt2gen.num_threads()

    def run():
        model = GPT2.from_pretrained(model_dir)
        try:
            return (model.generate("once upon a time", 150, **options), model.score(text),
                    model.engine.forward(model.encode(text)))
        finally:
            model.close()

    try:
        gpt2gen.set_num_threads(1)
        alone = run()
        gpt2gen.set_num_threads(2)
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            loaded = [run() for _ in range(3)]
        finally:
            busy.kill()
            busy.wait()
    finally:
        gpt2gen.set_num_threads(before)
    assert alone[0].logprobs is not None and len(model_tokens := alone[0].token_ids) == 150
    assert len(alone[1].logprobs) > 3 * 128  # several chunks of the whole-sequence pass
    for completion, score, logits in loaded:
        assert completion == alone[0] and completion.token_ids == model_tokens
        assert score.token_ids == alone[1].token_ids
        np.testing.assert_array_equal(score.logprobs, alone[1].logprobs)
        np.testing.assert_array_equal(logits, alone[2])
