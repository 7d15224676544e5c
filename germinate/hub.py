"""Publishing a run's dataset folder to the Hugging Face Hub.

The token is huggingface_hub's to find and send (HF_TOKEN, or `hf auth login`'s file); germinate
only asks whether there is one, so it cannot reach a config, a log line, a report or an artifact.
"""

from __future__ import annotations

import re

from germinate.card import CLUSTER_PLOT, SCORE_PLOT, dataset_card
from germinate.config import build_config
from germinate.errors import UserError
from germinate.io import write_atomic
from germinate.report import Report
from germinate.runs import Run

# What an earlier publish wrote and a new one may replace; anything else in the repo is the user's.
OWN_FILES = re.compile(r"(data|preference)/train-\d{5}-of-\d{5}\.parquet")
OWN_PLOTS = (CLUSTER_PLOT, SCORE_PLOT)


def check_token() -> None:
    """Before a run that publishes spends its budget: is there a token at all?"""
    from huggingface_hub import get_token

    if get_token() is None:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")


def publish(run: Run, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Upload dataset/ (data shards, card, images) as one commit; data files and plots of an earlier
    publish that this one no longer has (fewer shards) are deleted in the same commit, and nothing
    else. Returns the commit's URL."""
    import httpx2  # huggingface_hub's HTTP client: its errors (and the Hub's, a subclass) are these
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    run.dataset()  # a clear error when the run has no dataset yet
    check_token()
    folder = run.dataset_dir
    write_atomic(folder / "README.md", _card(run, repo_id))
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    api = HfApi()
    try:
        # Not private: the account's or organisation's default visibility.
        api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
        if private and not api.repo_info(repo_id, repo_type="dataset").private:
            # create_repo leaves an existing repo as it is: the data would go out public
            raise UserError(f"{repo_id}: the repo exists and is public; make it private on the Hub first, "
                            "or publish without --private")
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        try:
            present = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
        except RevisionNotFoundError:  # a new repo has no commit yet
            present = []
        stale = [p for p in present if p not in files and (OWN_FILES.fullmatch(p) or p in OWN_PLOTS)]
        commit = api.create_commit(
            repo_id,
            repo_type="dataset",
            revision=revision,
            operations=[
                *(CommitOperationDelete(path_in_repo=p) for p in stale),
                *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()),
            ],
            commit_message=f"germinate run {run.root.name}",
        )
    except httpx2.HTTPError as exc:
        raise UserError(f"{repo_id}: publishing to the Hub failed ({_first_line(exc)})") from None
    return commit.commit_url


def _card(run: Run, repo_id: str) -> bytes:
    """The run's card as the repo shows it: its load example names the repo, not a local folder."""
    if not run.report_path.exists():
        raise UserError(f"{run.report_path}: missing; run the same command that made the run again to finish it")
    config = build_config(run.config_path)
    config = config.model_copy(update={"hub": config.hub.model_copy(update={"repo_id": repo_id})})
    images = sorted(path.relative_to(run.dataset_dir).as_posix() for path in run.dataset_dir.glob("images/*.png"))
    return dataset_card(config, Report.read(run.report_path), images).encode()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

