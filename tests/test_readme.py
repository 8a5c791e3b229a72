"""The README's figures come from reports/, and its test command is what CI runs."""
import re
from pathlib import Path

from training.readme_results import results_table

REPO = Path(__file__).resolve().parents[1]


def test_results_table_matches_reports():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0].strip()
    assert block == results_table().strip(), "run: python -m training.readme_results"
    from training.readme_results import bench_table
    block = readme.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0].strip()
    assert block == bench_table().strip(), "run: python -m training.readme_results"


def test_two_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    assert len(commands) >= 2
    main_job, tests = commands[0], commands[1]
    assert main_job.startswith(".ci/setup") and "edge-train" in main_job
    assert tests in (REPO / ".ci" / "run").read_text(), "README's test command must be what .ci/run runs"
