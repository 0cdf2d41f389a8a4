"""taskyard-agent, the entrypoint of the agent images, run as the images run it: a process whose CLI
is a stand-in on PATH that reads its stdin and prints the CLI's documented stream-json events. (The
e2e tier runs the real CLIs in their images; these make each path of the entrypoint fast and exact.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ENTRYPOINT = Path(__file__).resolve().parents[2] / "agents" / "entrypoint" / "taskyard_agent.py"
SETUP_FAILED, LIMIT_REACHED = 120, 121


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    """An executable ``name`` on PATH running ``body`` (Python) with ``prompt`` = its stdin."""
    script = bin_dir / name
    header = f"#!{sys.executable}\nimport json, sys, time, os, signal\nprompt = sys.stdin.read()\n"
    header += "def say(event):\n    print(json.dumps(event), flush=True)\n"
    script.write_text(header + textwrap.dedent(body))
    script.chmod(0o755)


def assistant(*blocks: dict, input_tokens: int = 10, output_tokens: int = 5) -> dict:
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    return {"type": "assistant", "message": {"role": "assistant", "content": list(blocks), "usage": usage}}


FIRST_TURN = assistant(
    {"type": "text", "text": "I will write the file."},
    {"type": "tool_use", "id": "t1", "name": "Write", "input": {"file_path": "notes.txt", "content": "hi"}},
)
CONVERSATION = f"""
say({{"type": "system", "subtype": "init", "session_id": "s"}})
say({FIRST_TURN!r})
say({{"type": "user", "message": {{"content": [
    {{"type": "tool_result", "tool_use_id": "t1", "content": "wrote notes.txt"}}]}}}})
say({assistant({"type": "text", "text": "All done."})!r})
say({{"type": "result", "subtype": "success", "is_error": False, "result": "All done.",
     "num_turns": 2, "total_cost_usd": 0.0123,
     "usage": {{"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 12}}}})
"""


@pytest.fixture
def agent(tmp_path: Path):
    """Runs the entrypoint; returns (exit code, stdout, result record or None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    prompt = tmp_path / "prompt"
    prompt.write_text("write notes.txt")
    result = tmp_path / "termination-log"

    class Agent:
        def __init__(self) -> None:
            self.bin, self.workspace, self.prompt, self.result, self.home = (
                bin_dir,
                workspace,
                prompt,
                result,
                home,
            )

        def env(self, **extra: str) -> dict[str, str]:
            return {
                "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "HOME": str(home),
                "TASKYARD_PROMPT_FILE": str(prompt),
                "TASKYARD_RESULT_FILE": str(result),
                "TASKYARD_WORKSPACE": str(workspace),
                **extra,
            }

        def start(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, str(ENTRYPOINT), *args], env=self.env(**extra), stdout=subprocess.PIPE
            )

        def __call__(self, *args: str, **extra: str) -> tuple[int, str, dict | None]:
            done = subprocess.run(
                [sys.executable, str(ENTRYPOINT), *args],
                env=self.env(**extra),
                capture_output=True,
                timeout=60,
            )
            return done.returncode, done.stdout.decode(), self.record()

        def record(self) -> dict | None:
            return json.loads(result.read_text()) if result.exists() else None

    return Agent()


def test_a_conversation_reads_as_lines_and_its_usage_is_in_the_result_record(agent) -> None:
    stand_in(agent.bin, "claude", CONVERSATION)
    code, out, record = agent("claude-code")
    assert code == 0
    lines = out.splitlines()
    assert "I will write the file." in lines
    assert '→ Write {"content": "hi", "file_path": "notes.txt"}' in lines
    assert "  ← wrote notes.txt" in lines
    assert lines[-1] == "All done."
    assert not any(line.startswith("{") for line in lines)  # no raw event left in the log
    assert record["summary"] == "All done."
    assert record["usage"] == {"inputTokens": 120, "outputTokens": 12, "turns": 2, "costUSD": 0.0123}


def test_the_cli_is_run_non_interactively_with_the_prompt_on_stdin(agent) -> None:
    prompt = "--version is not a flag here\n" + "x" * 100 * 1024
    agent.prompt.write_text(prompt)
    stand_in(
        agent.bin,
        "claude",
        """
        print("argv", json.dumps(sys.argv[1:]), flush=True)
        print("prompt", len(prompt), prompt.startswith("--version"), flush=True)
        say({"type": "result", "subtype": "success", "result": "ok", "num_turns": 1})
        """,
    )
    code, out, _ = agent("claude-code", "--max-turns", "9", TASK_MODEL="claude-test-1")
    assert code == 0
    argv = json.loads(out.splitlines()[0].split(" ", 1)[1])
    assert argv[:5] == ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
    assert argv[5:] == ["--model", "claude-test-1", "--max-turns", "9"]
    assert f"prompt {len(prompt)} True" in out  # the whole prompt, as written, never in argv


def test_bytes_that_are_not_utf8_and_lines_that_are_not_events_are_kept(agent) -> None:
    stand_in(
        agent.bin,
        "claude",
        """
        sys.stdout.buffer.write(b"progress \\xff\\xfe 50%\\n{not json\\n")
        sys.stdout.flush()
        say({"type": "assistant", "message": "a shape this adapter does not know"})
        say({"type": "result", "subtype": "success", "result": "ok"})
        """,
    )
    code, out, record = agent("claude-code")
    assert code == 0
    assert "progress \ufffd\ufffd 50%" in out and "{not json" in out
    assert "a shape this adapter does not know" in out  # shown as it came, not dropped
    assert record["summary"] == "ok"


def test_max_turns_stops_a_conversation_that_never_ends(agent) -> None:
    stand_in(
        agent.bin,
        "claude",
        """
        turn = 0
        while True:
            turn += 1
            say({"type": "assistant", "message": {"content": [{"type": "text", "text": f"turn {turn}"}],
                 "usage": {"input_tokens": 1, "output_tokens": 1}}})
            time.sleep(0.05)
        """,
    )
    started = time.monotonic()
    code, out, record = agent("claude-code", TASKYARD_MAX_TURNS="3")
    assert code == LIMIT_REACHED
    assert time.monotonic() - started < 15
    assert "turn 4" in out and "turn 6" not in out
    assert record["limit"].startswith("maxTurns: 4 turns, more than the limit of 3")
    assert record["usage"]["turns"] == 4 and record["summary"] == "turn 4"


@pytest.mark.parametrize(
    ("limit", "value", "named"),
    [("TASKYARD_MAX_TOKENS", "100", "maxTokens"), ("TASKYARD_MAX_COST_USD", "0.5", "maxCostUSD")],
)
def test_token_and_cost_limits_stop_the_agent(agent, limit: str, value: str, named: str) -> None:
    stand_in(
        agent.bin,
        "claude",
        """
        spent = 0.0
        while True:  # a stream that reports its running cost
            spent += 0.2
            usage = {"input_tokens": 30, "output_tokens": 10}
            say({"type": "assistant", "message": {"content": [], "usage": usage}})
            say({"type": "result", "subtype": "success", "result": "", "total_cost_usd": spent})
            time.sleep(0.05)
        """,
    )
    code, _, record = agent("claude-code", **{limit: value})
    assert code == LIMIT_REACHED and record["limit"].startswith(named)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"TASKYARD_MAX_TURNS": "many"}, "TASKYARD_MAX_TURNS='many' is not a number"),
        ({"TASKYARD_MAX_TOKENS": "0"}, "must be greater than 0"),
        (
            {"TASKYARD_PROMPT_FILE": "/nonexistent/prompt"},
            "the prompt file /nonexistent/prompt does not exist",
        ),
        ({}, "claude is not installed in this image"),
    ],
    ids=["limit-not-a-number", "limit-zero", "no-prompt", "no-cli"],
)
def test_setup_failures_have_their_own_exit_code_and_say_why(agent, setup: dict, message: str) -> None:
    code, out, record = agent("claude-code", **setup)
    assert code == SETUP_FAILED
    assert message in out and message in record["error"]


def test_an_unknown_cli_is_a_setup_failure(agent) -> None:
    code, _, _ = agent("no-such-agent")
    assert code == SETUP_FAILED


def test_the_cli_exit_code_is_the_agent_exit_code(agent) -> None:
    stand_in(
        agent.bin,
        "claude",
        'say({"type": "result", "subtype": "error_during_execution", "is_error": True})\nsys.exit(3)',
    )
    code, out, record = agent("claude-code")
    assert code == 3
    assert record["error"] == "error_during_execution"
    assert "the agent ended with error_during_execution" in out


def test_sigterm_reaches_the_cli_and_its_last_words_are_kept(agent) -> None:
    stand_in(
        agent.bin,
        "claude",
        """
        def bye(signum, frame):  # os.write: the signal may land inside a print
            text = {"type": "text", "text": "cancelled, saving"}
            last = {"type": "assistant", "message": {"content": [text]}}
            os.write(1, (json.dumps(last) + "\\n").encode())
            os._exit(0)
        signal.signal(signal.SIGTERM, bye)
        say({"type": "assistant", "message": {"content": [{"type": "text", "text": "working"}]}})
        time.sleep(60)
        """,
    )
    process = agent.start("claude-code")
    assert process.stdout.readline() == b"working\n"
    process.send_signal(signal.SIGTERM)
    rest = process.stdout.read().decode()
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    assert "cancelled, saving" in rest
    assert agent.record()["summary"] == "cancelled, saving"


def test_the_result_record_fits_a_termination_message(agent) -> None:
    files = "\n".join(f"open(f'file-{i:04d}-with-a-long-name.txt', 'w').write('x')" for i in range(400))
    stand_in(
        agent.bin,
        "claude",
        files + '\nsay({"type": "result", "subtype": "success", "result": "é" * 5000})',
    )
    origin = make_origin(agent.workspace.parent)
    code, _, record = agent("claude-code", TASKYARD_REPO_URL=str(origin))
    assert code == 0
    assert len(agent.result.read_bytes()) <= 4096
    assert record["changedFilesTruncated"] is True and record["summary"].startswith("é")


# --- the git workspace ----------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_origin(parent: Path) -> Path:
    """A bare repository with one commit on main (README) and a tag v1."""
    seed, origin = parent / "seed", parent / "origin.git"
    seed.mkdir()
    git(seed, "init", "--quiet", "-b", "main")
    (seed / "README").write_text("hello\n")
    git(seed, "add", "README")
    git(seed, "commit", "--quiet", "-m", "first")
    git(seed, "tag", "v1")
    git(parent, "clone", "--quiet", "--bare", str(seed), str(origin))
    return origin


WRITES_A_FILE = """
open("notes.txt", "w").write(prompt)
say({"type": "result", "subtype": "success", "result": "Wrote notes.txt."})
"""


def test_the_repository_is_cloned_and_the_work_pushed_on_its_branch(agent) -> None:
    origin = make_origin(agent.workspace.parent)
    stand_in(agent.bin, "claude", WRITES_A_FILE)
    code, out, record = agent(
        "claude-code",
        TASKYARD_REPO_URL=str(origin),
        TASKYARD_REPO_BRANCH="agent/notes",
        TASKYARD_REPO_PUSH="true",
        TASKYARD_TASK="write-notes",
    )
    assert code == 0, out
    assert record["branch"] == "agent/notes" and record["changedFiles"] == ["notes.txt"] and record["pushed"]
    pushed = git(origin, "rev-parse", "refs/heads/agent/notes").strip()
    assert record["commit"] == pushed
    assert git(origin, "show", f"{pushed}:notes.txt") == "write notes.txt"
    assert git(origin, "log", "-1", "--format=%s", pushed).strip() == "taskyard: write-notes"
    assert git(origin, "rev-parse", "refs/heads/main") != pushed  # main is left alone


def test_a_ref_is_checked_out_and_nothing_is_pushed_without_push(agent) -> None:
    origin = make_origin(agent.workspace.parent)
    tag = git(origin, "rev-parse", "v1").strip()
    stand_in(agent.bin, "claude", WRITES_A_FILE)
    code, _, record = agent("claude-code", TASKYARD_REPO_URL=str(origin), TASKYARD_REPO_REF="v1")
    assert code == 0
    assert record["commit"] == tag and record["changedFiles"] == ["notes.txt"] and "pushed" not in record
    assert git(origin, "for-each-ref", "--format=%(refname:short)", "refs/heads").split() == ["main"]


def test_a_workspace_that_is_not_empty_is_not_cloned_over(agent) -> None:
    origin = make_origin(agent.workspace.parent)
    (agent.workspace / "someone-elses-file").write_text("keep me")
    code, out, _ = agent("claude-code", TASKYARD_REPO_URL=str(origin))
    assert code == SETUP_FAILED and "is not empty and is not a clone" in out
    assert (agent.workspace / "someone-elses-file").read_text() == "keep me"


def test_a_repository_that_cannot_be_cloned_is_a_setup_failure(agent) -> None:
    code, out, record = agent("claude-code", TASKYARD_REPO_URL=str(agent.workspace.parent / "missing.git"))
    assert code == SETUP_FAILED
    assert "git clone failed" in out and "git clone failed" in record["error"]


def test_a_token_is_given_to_git_by_a_credential_helper_never_in_argv_or_url(agent, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token").write_text("s3cr3t")
    # A git on PATH that records how it was called and what the credential helper answers.
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    log = tmp_path / "git-calls"
    (agent.bin / "git").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        'for a in "$@"; do case "$a" in credential.helper=*) h="${a#credential.helper=!}";; esac; done\n'
        f'[ -n "$h" ] && sh -c "$h" >> {log}.helper\n'
        f'exec {real_git} "$@"\n'
    )
    (agent.bin / "git").chmod(0o755)
    origin = make_origin(agent.workspace.parent)
    stand_in(agent.bin, "claude", WRITES_A_FILE)
    code, _, _ = agent("claude-code", TASKYARD_REPO_URL=str(origin), TASKYARD_GIT_CREDENTIALS=str(secret))
    assert code == 0
    assert "s3cr3t" not in log.read_text()  # not on any command line
    assert "password=s3cr3t" in (tmp_path / "git-calls.helper").read_text()
