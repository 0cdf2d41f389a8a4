"""taskyard-agent, the entrypoint of the agent images, run as the images run it: a process whose CLI
is a stand-in on PATH that reads its stdin and prints the CLI's documented stream-json events. (The
e2e tier runs the real CLIs in their images; these make each path of the entrypoint fast and exact.)"""

from __future__ import annotations

import importlib.util
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


# --- the real CLIs' streams -------------------------------------------------------------------------------
# Lines as Claude Code 2.1 and Codex 0.171 printed them for a scripted model (ids, timestamps and some
# bulky fields left out).

CLAUDE_CODE_STREAM = r"""
{"type":"system","subtype":"init","cwd":"/w","model":"claude-opus-5-5","claude_code_version":"2.1.332","permissionMode":"bypassPermissions"}
{"type":"assistant","message":{"id":"msg_26d6","type":"message","role":"assistant","model":"claude-opus-5-5","content":[{"type":"text","text":"I will write hello.txt."}],"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}},"parent_tool_use_id":null}
{"type":"assistant","message":{"id":"msg_26d6","type":"message","role":"assistant","model":"claude-opus-5-5","content":[{"type":"tool_use","id":"toolu_1d08","name":"Write","input":{"file_path":"/w/hello.txt","content":"hello from the model stub\n"}}],"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}},"parent_tool_use_id":null}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1d08","type":"tool_result","content":"File created successfully at: /w/hello.txt"}]},"parent_tool_use_id":null}
{"type":"assistant","message":{"id":"msg_6ea2","type":"message","role":"assistant","model":"claude-opus-5-5","content":[{"type":"text","text":"Now I will run a command."}],"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}},"parent_tool_use_id":null}
{"type":"assistant","message":{"id":"msg_6ea2","type":"message","role":"assistant","model":"claude-opus-5-5","content":[{"type":"tool_use","id":"toolu_1921","name":"Bash","input":{"command":"cat hello.txt","description":"Show the file"}}],"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}},"parent_tool_use_id":null}
{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1921","type":"tool_result","content":"hello from the model stub","is_error":false}]},"parent_tool_use_id":null}
{"type":"assistant","message":{"id":"msg_6c90","type":"message","role":"assistant","model":"claude-opus-5-5","content":[{"type":"text","text":"Done: wrote hello.txt and ran the command."}],"stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}},"parent_tool_use_id":null}
{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"Done: wrote hello.txt and ran the command.","stop_reason":"end_turn","total_cost_usd":0.0024000000000000002,"usage":{"input_tokens":300,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":60},"terminal_reason":"completed"}
""".strip().splitlines()  # noqa: E501 - lines as the CLIs print them

CLAUDE_CODE_API_ERROR = r"""
{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":609,"error_status":null,"error":"unknown"}
{"type":"assistant","message":{"id":"75e69c13","model":"<synthetic>","role":"assistant","stop_reason":"stop_sequence","type":"message","usage":{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"content":[{"type":"text","text":"API Error: 400 the request is invalid"}]},"parent_tool_use_id":null,"error":"unknown","is_api_error_message":true,"api_error_status":400,"api_error_type":"invalid_request_error"}
{"type":"result","subtype":"success","is_error":true,"num_turns":1,"result":"API Error: 400 the request is invalid","stop_reason":"stop_sequence","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0},"terminal_reason":"api_error","api_error_status":400,"api_error_type":"invalid_request_error"}
""".strip().splitlines()  # noqa: E501 - lines as the CLIs print them

CODEX_STREAM = r"""
{"type":"thread.started","thread_id":"01a23930-7094-7f10-8844-7f52f017ceda"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"I will write hello.txt."}}
{"type":"item.started","item":{"id":"item_1","type":"file_change","changes":[{"path":"/w/hello.txt","kind":"add"}],"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"file_change","changes":[{"path":"/w/hello.txt","kind":"add"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Now I will run a command."}}
{"type":"item.started","item":{"id":"item_3","type":"command_execution","command":"/usr/bin/bash -lc 'cat missing.txt'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"/usr/bin/bash -lc 'cat missing.txt'","aggregated_output":"cat: missing.txt: No such file or directory\n","exit_code":1,"status":"failed"}}
{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"Done: wrote hello.txt and ran the command."}}
{"type":"turn.completed","usage":{"input_tokens":300,"cached_input_tokens":0,"cache_write_input_tokens":0,"output_tokens":60,"reasoning_output_tokens":0}}
""".strip().splitlines()  # noqa: E501 - lines as the CLIs print them

CODEX_ENDLESS = r"""
{"type":"thread.started","thread_id":"01a23930-a07d-7fa3-a246-ea1278a7ca7c"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"Turn 1: one more command."}}
{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/usr/bin/bash -lc 'echo turn 1'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/usr/bin/bash -lc 'echo turn 1'","aggregated_output":"turn 1\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Turn 2: one more command."}}
{"type":"item.started","item":{"id":"item_3","type":"command_execution","command":"/usr/bin/bash -lc 'echo turn 2'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"/usr/bin/bash -lc 'echo turn 2'","aggregated_output":"turn 2\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"Turn 3: one more command."}}
{"type":"item.started","item":{"id":"item_5","type":"command_execution","command":"/usr/bin/bash -lc 'echo turn 3'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
""".strip().splitlines()  # noqa: E501 - lines as the CLIs print them

CODEX_API_ERROR = r"""
{"type":"thread.started","thread_id":"01a2392c-9f14-7600-81b3-5f84642b24af"}
{"type":"turn.started"}
{"type":"error","message":"{\"error\": {\"message\": \"the request is invalid\", \"type\": \"invalid_request_error\", \"param\": null, \"code\": null}}"}
{"type":"turn.failed","error":{"message":"{\"error\": {\"message\": \"the request is invalid\", \"type\": \"invalid_request_error\", \"param\": null, \"code\": null}}"}}
""".strip().splitlines()  # noqa: E501 - lines as the CLIs print them


def replaying(bin_dir: Path, name: str, lines: list[str], exit_code: int = 0, hold: bool = False) -> None:
    """A CLI that prints ``lines`` as they are; with ``hold``, it then waits to be stopped."""
    body = f"for line in {lines!r}:\n    print(line, flush=True)\n    time.sleep(0.01)\n"
    body += "time.sleep(60)\n" if hold else f"sys.exit({exit_code})\n"
    stand_in(bin_dir, name, body)


def test_claude_code_reads_as_lines_with_one_turn_per_model_message(agent) -> None:
    replaying(agent.bin, "claude", CLAUDE_CODE_STREAM)
    code, out, record = agent("claude-code")
    assert code == 0
    assert out.splitlines() == [
        "[claude] Claude Code 2.1.332, model claude-opus-5-5",
        "I will write hello.txt.",
        '→ Write {"content": "hello from the model stub\\n", "file_path": "/w/hello.txt"}',
        "  ← File created successfully at: /w/hello.txt",
        "Now I will run a command.",
        '→ Bash {"command": "cat hello.txt", "description": "Show the file"}',
        "  ← hello from the model stub",
        "Done: wrote hello.txt and ran the command.",
    ]
    assert record["summary"] == "Done: wrote hello.txt and ran the command."
    assert record["usage"] == {"inputTokens": 300, "outputTokens": 60, "turns": 3, "costUSD": 0.0024}


def test_claude_code_turns_and_tokens_count_a_message_once_while_it_runs(agent) -> None:
    """Each model message comes as one line per content block, all with its id and usage: the third
    message, not the third line, passes a limit of two turns, and each message's tokens count once."""
    replaying(agent.bin, "claude", CLAUDE_CODE_STREAM[:-1], hold=True)
    code, out, record = agent("claude-code", TASKYARD_MAX_TURNS="2")
    assert code == LIMIT_REACHED
    lines = out.splitlines()
    stop = lines.index("[taskyard-agent] stopping the agent: maxTurns: 3 turns, more than the limit of 2")
    assert lines[stop - 1] == "Done: wrote hello.txt and ran the command."
    assert record["usage"] == {"inputTokens": 300, "outputTokens": 3, "turns": 3}


def test_claude_code_model_api_errors_are_logged_and_end_the_run_as_failed(agent) -> None:
    replaying(agent.bin, "claude", CLAUDE_CODE_API_ERROR, exit_code=1)
    code, out, record = agent("claude-code")
    assert code == 1
    assert out.splitlines() == [
        "[claude] the model API failed (unknown); retry 1 of 10 in 0.6s",
        "API Error: 400 the request is invalid",
        "[taskyard-agent] the agent ended with api_error (HTTP 400)",
    ]
    assert record["error"] == "api_error (HTTP 400)"
    assert record["summary"] == "API Error: 400 the request is invalid"


def test_codex_reads_as_lines_and_reports_its_usage_at_the_end(agent) -> None:
    replaying(agent.bin, "codex", CODEX_STREAM)
    code, out, record = agent("codex")
    assert code == 0
    assert out.splitlines() == [
        "[codex] thread 01a23930-7094-7f10-8844-7f52f017ceda",
        "I will write hello.txt.",
        "→ edit add /w/hello.txt",
        "  ← completed",
        "Now I will run a command.",
        "→ shell cat missing.txt",  # without the shell Codex wraps every command in
        "  ← error: cat: missing.txt: No such file or directory",
        "Done: wrote hello.txt and ran the command.",
    ]
    assert record["summary"] == "Done: wrote hello.txt and ran the command."
    assert record["usage"] == {"inputTokens": 300, "outputTokens": 60, "turns": 3}  # Codex reports no cost


def test_max_turns_stops_codex_where_the_model_speaks_after_its_second_tool(agent) -> None:
    replaying(agent.bin, "codex", CODEX_ENDLESS, hold=True)
    started = time.monotonic()
    code, out, record = agent("codex", TASKYARD_MAX_TURNS="2")
    assert code == LIMIT_REACHED and time.monotonic() - started < 15
    lines = out.splitlines()
    stop = lines.index("[taskyard-agent] stopping the agent: maxTurns: 3 turns, more than the limit of 2")
    assert lines[stop - 1] == "Turn 3: one more command."
    assert (
        record["limit"].startswith("maxTurns: 3 turns") and record["summary"] == "Turn 3: one more command."
    )


def test_a_failed_codex_turn_says_the_model_apis_message(agent) -> None:
    replaying(agent.bin, "codex", CODEX_API_ERROR, exit_code=1)
    code, out, record = agent("codex")
    assert code == 1
    assert "[codex] the request is invalid" in out.splitlines()
    assert record["error"] == "the request is invalid"


ARGV_ONLY = """
print("argv", json.dumps(sys.argv[1:]), flush=True)
say({"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}})
"""


def codex_argv(agent, *args: str, **env: str) -> list[str]:
    stand_in(agent.bin, "codex", ARGV_ONLY)
    code, out, _ = agent("codex", *args, **env)
    assert code == 0
    return json.loads(out.splitlines()[0].split(" ", 1)[1])


def test_codex_runs_unattended_with_the_prompt_on_stdin(agent) -> None:
    argv = codex_argv(agent, "-c", "model_reasoning_effort=high", TASK_MODEL="gpt-test")
    assert argv == [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-c",
        "features.plugins=false",
        "--model",
        "gpt-test",
        "-c",
        "model_reasoning_effort=high",
        "-",
    ]


@pytest.mark.parametrize(
    ("key", "auth"),
    [
        ({"OPENAI_API_KEY": "k"}, "model_providers.taskyard.env_key=OPENAI_API_KEY"),
        ({"CODEX_API_KEY": "k"}, "model_providers.taskyard.requires_openai_auth=true"),
    ],
)
def test_openai_base_url_makes_codex_a_provider_of_its_own(agent, key: dict, auth: str) -> None:
    argv = codex_argv(agent, OPENAI_BASE_URL="http://models.example:8080/v1", **key)
    settings = [argv[i + 1] for i, word in enumerate(argv) if word == "-c"]
    assert "model_provider=taskyard" in settings
    assert 'model_providers.taskyard.base_url="http://models.example:8080/v1"' in settings
    assert "model_providers.taskyard.wire_api=responses" in settings
    assert auth in settings


# --- the adapters, line by line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entrypoint():
    spec = importlib.util.spec_from_file_location("taskyard_agent", ENTRYPOINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def parsed(entrypoint, adapter, lines: list[str | dict]):
    usage = entrypoint.Usage()
    events = []
    for line in lines:
        events += adapter.parse(json.loads(line) if isinstance(line, str) else line, usage)
    return events, usage


def test_claude_code_subagent_messages_cost_tokens_but_are_not_turns(entrypoint) -> None:
    def message(message_id: str, parent: str | None) -> dict:
        usage = {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 5}
        body = {"id": message_id, "content": [{"type": "text", "text": message_id}], "usage": usage}
        return {"type": "assistant", "message": body, "parent_tool_use_id": parent}

    lines = [
        message("main", None),
        message("sub-1", "toolu_1"),
        message("sub-1", "toolu_1"),
        message("sub-2", "toolu_1"),
    ]
    _, usage = parsed(entrypoint, entrypoint.ClaudeCode(), lines)
    assert (usage.turns, usage.input_tokens, usage.output_tokens) == (1, 45, 6)


def test_codex_counts_a_turn_for_each_model_reply_even_when_a_command_keeps_running(entrypoint) -> None:
    """A command still running when Codex's shell tool yields never completes in the stream; the
    model's next words still start a new turn."""
    lines = []
    for n in range(3):
        lines.append(
            {"type": "item.completed", "item": {"id": f"m{n}", "type": "agent_message", "text": "wait"}}
        )
        running = {
            "id": f"c{n}",
            "type": "command_execution",
            "command": "sleep 600",
            "status": "in_progress",
        }
        lines.append({"type": "item.started", "item": running})
    events, usage = parsed(entrypoint, entrypoint.Codex(), lines)
    assert usage.turns == 3
    assert [type(event).__name__ for event in events] == ["Text", "ToolCall"] * 3


def test_codex_items_of_every_kind_read_as_lines(entrypoint) -> None:
    """Item shapes as `codex exec --json` documents them."""
    items = [
        ("item.completed", {"id": "r", "type": "reasoning", "text": "**Planning** the change"}),
        (
            "item.started",
            {
                "id": "p",
                "type": "todo_list",
                "items": [{"text": "read", "completed": True}, {"text": "fix", "completed": False}],
            },
        ),
        (
            "item.started",
            {
                "id": "m",
                "type": "mcp_tool_call",
                "server": "docs",
                "tool": "search",
                "arguments": {"q": "x"},
                "status": "in_progress",
            },
        ),
        (
            "item.completed",
            {
                "id": "m",
                "type": "mcp_tool_call",
                "server": "docs",
                "tool": "search",
                "arguments": {"q": "x"},
                "result": {"content": [{"type": "text", "text": "found"}]},
                "status": "completed",
            },
        ),
        (
            "item.completed",
            {
                "id": "m2",
                "type": "mcp_tool_call",
                "server": "docs",
                "tool": "get",
                "arguments": {},
                "error": {"message": "no such page"},
                "status": "failed",
            },
        ),
        ("item.completed", {"id": "w", "type": "web_search", "query": "kubernetes jobs"}),
        (
            "item.completed",
            {
                "id": "c",
                "type": "command_execution",
                "command": "rm -rf /",
                "aggregated_output": "",
                "exit_code": None,
                "status": "declined",
            },
        ),
        ("item.completed", {"id": "e", "type": "error", "message": "the command was declined"}),
        ("item.completed", {"id": "n", "type": "something_new", "detail": 1}),
    ]
    events, _ = parsed(entrypoint, entrypoint.Codex(), [{"type": kind, "item": item} for kind, item in items])
    lines = [line for event in events for line in entrypoint.readable(event)]
    assert lines == [
        "[codex] thinking: **Planning** the change",
        "[codex] plan: [x] read; [ ] fix",
        '→ docs.search {"q": "x"}',
        "  ← found",
        "→ docs.get {}",
        "  ← error: no such page",
        "→ web_search kubernetes jobs",
        "→ shell rm -rf /",
        "  ← error: declined",
        "[codex] the command was declined",
        '[codex] something_new: {"detail": 1}',
    ]


def test_a_read_only_home_is_replaced_by_one_under_the_temporary_directory(entrypoint, tmp_path):
    read_only = tmp_path / "home-agent"
    read_only.mkdir(mode=0o555)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if os.access(read_only, os.W_OK):  # root may write anywhere; the check cannot be made
        read_only.chmod(0o755)
        assert entrypoint.writable_home({"HOME": str(read_only)}) == read_only
        return
    home = entrypoint.writable_home({"HOME": str(read_only), "TMPDIR": str(scratch)})
    assert home == scratch / "home" and home.is_dir()


def test_a_writable_home_is_kept_and_a_missing_one_replaced(entrypoint, tmp_path):
    assert entrypoint.writable_home({"HOME": str(tmp_path)}) == tmp_path
    scratch = tmp_path / "scratch"
    home = entrypoint.writable_home({"TMPDIR": str(scratch)})
    assert home == scratch / "home" and home.is_dir()


def test_git_trusts_a_workspace_another_user_owns(entrypoint, tmp_path):
    """The workspace volume belongs to root; git refuses such a repository unless told to trust it."""
    earlier = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "c"}
    env = entrypoint.trusting_workspace(earlier, tmp_path)
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("safe.directory", str(tmp_path))
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    shown = subprocess.run(
        ["git", "config", "--get-all", "safe.directory"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert str(tmp_path) in shown.stdout.split()
