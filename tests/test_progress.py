"""The progress bar's time left: from the finished runs' mean time when the task counts runs."""

from rich.progress import Progress

from gfss_bench.progress import RunsRemainingColumn


def test_time_left_comes_from_finished_runs():
    clock = [100.0]
    progress = Progress(get_time=lambda: clock[0])
    task = progress.add_task("bcm", total=1000, runs_done=0, runs_total=5)
    column = RunsRemainingColumn()
    assert column.render(progress.tasks[0]).plain == "ETA after run 1"
    clock[0] += 150.0  # run 1 spent 150 s fitting, then its queries
    progress.update(task, advance=200, runs_done=1)
    assert column.render(progress.tasks[0]).plain == "0:10:00"  # 4 runs x 150 s
    clock[0] += 50.0
    progress.update(task, advance=200, runs_done=2)
    assert column.render(progress.tasks[0]).plain == "0:05:00"  # 3 runs x 100 s
    plain = progress.add_task("features", total=10)
    assert column.render(progress.tasks[plain]).plain != "ETA after run 1"  # no run fields: the step rate
