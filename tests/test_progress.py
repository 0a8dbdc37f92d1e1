"""The status lines a log gets instead of a bar (modeling/progress.py): each state printed once."""

import io

from modeling.progress import StatusLines


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_close_does_not_repeat_the_line_the_last_update_printed():
    out = io.StringIO()
    status = StatusLines(total=3, desc="training", unit="steps", interval=0, file=out)
    for _ in range(3):
        status.set_postfix({"loss": "1.0"})
        status.update(1)
    status.close()
    assert [line.split(" | ")[0] for line in lines(out)] == [f"training: {n}/3 steps ({n / 3:.0%})" for n in (1, 2, 3)]


def test_close_prints_the_final_state_when_no_update_printed_it():
    out = io.StringIO()
    status = StatusLines(total=3, desc="training", unit="steps", interval=3600, file=out)
    status.update(3)
    assert lines(out) == []
    status.close()
    status.close()  # closing twice prints nothing more
    assert len(lines(out)) == 1 and lines(out)[0].startswith("training: 3/3 steps (100%)")
