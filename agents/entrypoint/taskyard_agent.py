#!/usr/bin/env python3
"""taskyard-agent: the one entrypoint of every coding-agent image.

    taskyard-agent <cli> [extra CLI arguments...]        cli: claude-code, gemini-cli, codex, opencode

It prepares /workspace (clones the Task's repository when one is given), runs the CLI
non-interactively with the prompt file on its standard input (never as an argument: a prompt of any
size, or one that starts with "-", reaches the model as written), turns the CLI's machine-readable
event stream into readable log lines, stops the CLI when a limit of the Task is passed, and at the end
commits and pushes the agent's changes when asked and writes a result record (JSON) where Kubernetes
keeps a container's termination message, for the operator to put in the Task's status.

Everything comes from the environment the operator renders into the pod:

    TASKYARD_PROMPT_FILE       the prompt (default /etc/taskyard/prompt)
    TASKYARD_RESULT_FILE       where the result record goes (default /dev/termination-log)
    TASKYARD_WORKSPACE         the working directory (default /workspace)
    TASK_MODEL                 the model, passed to the CLI's model option when set
    TASKYARD_MAX_TURNS, TASKYARD_MAX_TOKENS, TASKYARD_MAX_COST_USD     limits; unset means none
    TASKYARD_REPO_URL, TASKYARD_REPO_REF, TASKYARD_REPO_BRANCH, TASKYARD_REPO_PUSH ("true")
    TASKYARD_GIT_CREDENTIALS   a directory with the repository's Secret: `token` (HTTPS) or
                               `ssh-privatekey` (SSH), and optionally `known_hosts`
    TASK_NAME                  the Task's name, for the commit message (TASKYARD_TASK overrides it)
    HOME                       where the CLI keeps its settings; $TMPDIR/home when HOME is not writable
    OPENAI_BASE_URL            (codex) an OpenAI-compatible server to use instead of OpenAI's

Exit codes: the CLI's own, or EXIT_SETUP_FAILED (the workspace could not be prepared, the prompt is
missing, the CLI is not there) or EXIT_LIMIT_REACHED (a limit of the Task stopped the agent). The
agent presets mark both as not worth a retry.

Standard library only: it runs in every agent image, whatever else is installed there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

EXIT_SETUP_FAILED = 120
EXIT_LIMIT_REACHED = 121
RESULT_LIMIT_BYTES = 4096  # what the kubelet keeps of a termination message
SUMMARY_LIMIT_CHARS = 2000
TOOL_DETAIL_CHARS = 160
STOP_GRACE_SECONDS = 10


class SetupFailed(Exception):
    """The agent could not be started: its message is the Task's."""


# --- what the CLIs report, in one shape ---------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    turns: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "turns": self.turns,
        }
        if self.cost_usd is not None:
            record["costUSD"] = round(self.cost_usd, 6)
        return record


@dataclasses.dataclass(slots=True)
class Text:
    """Something the model said."""

    text: str


@dataclasses.dataclass(slots=True)
class ToolCall:
    name: str
    detail: str


@dataclasses.dataclass(slots=True)
class ToolOutput:
    text: str
    error: bool = False


@dataclasses.dataclass(slots=True)
class Final:
    """The CLI's last word: its answer, and whether it ended in an error."""

    summary: str
    error: str | None = None


@dataclasses.dataclass(slots=True)
class Note:
    """Something the CLI reports about itself (its start, a retry of the model API): logged as it is,
    never taken for the agent's answer."""

    text: str


Event = Text | ToolCall | ToolOutput | Final | Note


@dataclasses.dataclass(slots=True)
class Limits:
    max_turns: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Limits:
        def number(name: str, kind: Callable[[str], Any]) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return None
            try:
                value = kind(raw)
            except ValueError:
                raise SetupFailed(f"{name}={raw!r} is not a number") from None
            if value <= 0:
                raise SetupFailed(f"{name}={raw!r} must be greater than 0")
            return value

        return cls(
            number("TASKYARD_MAX_TURNS", int),
            number("TASKYARD_MAX_TOKENS", int),
            number("TASKYARD_MAX_COST_USD", float),
        )

    def passed(self, usage: Usage) -> str | None:
        """The limit ``usage`` has gone past, as the Task names it, or None."""
        if self.max_turns is not None and usage.turns > self.max_turns:
            return f"maxTurns: {usage.turns} turns, more than the limit of {self.max_turns}"
        if self.max_tokens is not None and usage.tokens > self.max_tokens:
            return f"maxTokens: {usage.tokens} tokens, more than the limit of {self.max_tokens}"
        if (
            self.max_cost_usd is not None
            and usage.cost_usd is not None
            and usage.cost_usd > self.max_cost_usd
        ):
            return f"maxCostUSD: ${usage.cost_usd:.4f}, more than the limit of ${self.max_cost_usd:g}"
        return None


# --- one adapter per CLI: its command line and its event stream ---------------------------------------


class Adapter:
    """How one CLI is run and how its stream of JSON lines reads. ``command`` is its argv (``env`` is the
    entrypoint's environment, which the CLI inherits); ``parse`` takes one decoded line and the running
    usage (which it updates) and returns what the line said. One adapter serves one run, so it may
    remember what earlier lines said."""

    binary: str = ""

    def command(self, model: str | None, extra: list[str], env: Mapping[str, str]) -> list[str]:
        raise NotImplementedError

    def parse(self, event: dict[str, Any], usage: Usage) -> list[Event]:
        raise NotImplementedError


def _short(value: Any, limit: int = TOOL_DETAIL_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _content_text(content: Any) -> str:
    """The text of a message content that is a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


class ClaudeCode(Adapter):
    """`claude -p --output-format stream-json --verbose`: one JSON object per line, of type system
    (init at the start; api_retry when a model request failed and is tried again), assistant (a model
    message: text and tool_use blocks, with its usage), user (tool_result blocks) and result (the answer,
    total cost, usage and turns; subtype error_* when it failed).

    A model message arrives as one assistant line per content block, each with the message's id and the
    usage known when the message started: a message is one turn and its usage counts once, however many
    lines carry it. Lines of a subagent (parent_tool_use_id set) count their tokens but not as turns of
    the conversation, as the CLI's own num_turns does not."""

    binary = "claude"

    def __init__(self) -> None:
        self._message_usage: dict[str, tuple[int, int]] = {}

    def command(self, model: str | None, extra: list[str], env: Mapping[str, str]) -> list[str]:
        argv = [self.binary, "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--dangerously-skip-permissions"]
        if model:
            argv += ["--model", model]
        return argv + extra

    def parse(self, event: dict[str, Any], usage: Usage) -> list[Event]:
        kind = event.get("type")
        message = event.get("message") or {}
        if kind == "system":
            return self._system(event)
        if kind == "assistant":
            self._count(message, usage, subagent=bool(event.get("parent_tool_use_id")))
            said: list[Event] = []
            for block in message.get("content") or []:
                if block.get("type") == "text" and block.get("text"):
                    said.append(Text(block["text"]))
                elif block.get("type") == "tool_use":
                    said.append(ToolCall(block.get("name", "?"), _short(block.get("input", {}))))
            return said
        if kind == "user":
            return [
                ToolOutput(_short(_content_text(block.get("content"))), bool(block.get("is_error")))
                for block in message.get("content") or []
                if isinstance(block, dict) and block.get("type") == "tool_result"
            ]
        if kind == "result":
            totals = event.get("usage") or {}
            if totals:  # the CLI's own totals replace what was summed from the messages
                usage.input_tokens = _anthropic_input_tokens(totals)
                usage.output_tokens = _int(totals.get("output_tokens"))
            if isinstance(event.get("total_cost_usd"), int | float):
                usage.cost_usd = float(event["total_cost_usd"])
            if isinstance(event.get("num_turns"), int):
                usage.turns = max(usage.turns, event["num_turns"])
            return [Final(str(event.get("result") or ""), self._failure(event))]
        return []

    def _count(self, message: dict[str, Any], usage: Usage, subagent: bool) -> None:
        tokens = message.get("usage") or {}
        reported = (_anthropic_input_tokens(tokens), _int(tokens.get("output_tokens")))
        message_id = message.get("id")
        counted = self._message_usage.get(message_id) if isinstance(message_id, str) else None
        if counted is None:
            counted = (0, 0)
            if not subagent:
                usage.turns += 1
        if isinstance(message_id, str):
            self._message_usage[message_id] = reported
        usage.input_tokens += reported[0] - counted[0]
        usage.output_tokens += reported[1] - counted[1]

    @staticmethod
    def _failure(result: dict[str, Any]) -> str | None:
        """Why the run failed, or None. A model API error ends it with is_error set but subtype
        "success": the reason is then in terminal_reason (api_error) and api_error_status."""
        subtype = str(result.get("subtype") or "success")
        if not result.get("is_error") and subtype == "success":
            return None
        reason = subtype if subtype != "success" else str(result.get("terminal_reason") or "error")
        status = result.get("api_error_status")
        return f"{reason} (HTTP {status})" if isinstance(status, int) else reason

    @staticmethod
    def _system(event: dict[str, Any]) -> list[Event]:
        subtype = event.get("subtype")
        if subtype == "init":
            version = event.get("claude_code_version") or "?"
            return [Note(f"[claude] Claude Code {version}, model {event.get('model') or '?'}")]
        if subtype == "api_retry":
            why = event.get("error_status") or event.get("error") or "an error"
            delay = _int(event.get("retry_delay_ms")) / 1000
            attempt, most = _int(event.get("attempt")), _int(event.get("max_retries"))
            return [Note(f"[claude] the model API failed ({why}); retry {attempt} of {most} in {delay:.1f}s")]
        return []


def _anthropic_input_tokens(tokens: dict[str, Any]) -> int:
    """All the input a request was billed for: new, read from the prompt cache and written to it."""
    return (
        _int(tokens.get("input_tokens"))
        + _int(tokens.get("cache_read_input_tokens"))
        + _int(tokens.get("cache_creation_input_tokens"))
    )


class Codex(Adapter):
    """`codex exec --json`: one JSON object per line, of type thread.started, turn.started,
    item.started / item.updated / item.completed (an item: agent_message, reasoning, command_execution,
    file_change, mcp_tool_call, web_search, todo_list, error), turn.completed (with the turn's usage),
    turn.failed, and error (the CLI reconnecting to the model API: it goes on).

    The stream does not mark model requests. Codex asks the model for one tool call at a time, so a turn
    starts where something new appears after a tool item (or first): a tool the model calls from a
    script of Codex's code mode counts as one more. Usage arrives only when the turn of `codex exec`
    ends, so a token limit can stop the agent only then; Codex reports no cost."""

    binary = "codex"
    # Items that run something on the model's behalf: the model hears back in a new request.
    TOOL_ITEMS = frozenset(
        {"command_execution", "file_change", "mcp_tool_call", "collab_tool_call", "todo_list"}
    )
    # Set on an agent that talks to an OpenAI-compatible server other than OpenAI's; Codex itself does
    # not read it, so it becomes a model provider of its own.
    BASE_URL_ENV = "OPENAI_BASE_URL"
    PROVIDER = "taskyard"

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._shown: set[str] = set()  # tool items whose call is in the log already
        self._after_tool = True  # the next new item starts a turn
        self._answer = ""

    def command(self, model: str | None, extra: list[str], env: Mapping[str, str]) -> list[str]:
        argv = [self.binary, "exec", "--json", "--skip-git-repo-check"]
        # The pod is the sandbox, and nobody is there to approve a command.
        argv += ["--dangerously-bypass-approvals-and-sandbox"]
        # Unattended: no plugin marketplace to sync at the start (a features.* setting, unlike
        # --disable, is accepted by a version that has no such feature).
        argv += ["-c", "features.plugins=false"]
        base_url = env.get(self.BASE_URL_ENV, "").strip()
        if base_url:
            provider = f"model_providers.{self.PROVIDER}"
            argv += ["-c", f"model_provider={self.PROVIDER}", "-c", f"{provider}.name={self.PROVIDER}"]
            argv += [
                "-c",
                f"{provider}.base_url={json.dumps(base_url)}",
                "-c",
                f"{provider}.wire_api=responses",
            ]
            if env.get("OPENAI_API_KEY"):
                argv += ["-c", f"{provider}.env_key=OPENAI_API_KEY"]
            elif env.get("CODEX_API_KEY"):
                argv += ["-c", f"{provider}.requires_openai_auth=true"]
        if model:
            argv += ["--model", model]
        return [*argv, *extra, "-"]  # "-": the prompt is standard input

    def parse(self, event: dict[str, Any], usage: Usage) -> list[Event]:
        kind = event.get("type")
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind, event["item"], usage)
        if kind == "thread.started":
            return [Note(f"[codex] thread {event.get('thread_id') or '?'}")]
        if kind == "turn.completed":
            tokens = event.get("usage") or {}
            usage.input_tokens += _int(tokens.get("input_tokens"))  # cached_input_tokens are among them
            usage.output_tokens += _int(tokens.get("output_tokens"))
            return [Final(self._answer)]
        if kind == "turn.failed":
            error = event.get("error") or {}
            return [Final(self._answer, _api_error_message(error.get("message")) or "turn.failed")]
        if kind == "error":
            return [Note(f"[codex] {_api_error_message(event.get('message')) or 'error'}")]
        return []

    def _item(self, kind: str, item: dict[str, Any], usage: Usage) -> list[Event]:
        item_type, item_id = item["type"], str(item.get("id"))
        if item_type != "error":
            if item_id not in self._seen:
                self._seen.add(item_id)
                if self._after_tool:
                    usage.turns += 1
                self._after_tool = False
            if item_type in self.TOOL_ITEMS:
                self._after_tool = True
        done = kind == "item.completed"
        if item_type == "agent_message":
            if not done or not item.get("text"):
                return []
            self._answer = item["text"]
            return [Text(item["text"])]
        if item_type == "reasoning":
            return [Note(f"[codex] thinking: {_short(item.get('text') or '', 400)}")] if done else []
        if item_type == "todo_list":
            steps = "; ".join(
                f"[{'x' if step.get('completed') else ' '}] {step.get('text', '')}"
                for step in item.get("items") or []
            )
            return [Note(f"[codex] plan: {steps}")]
        if item_type == "error":
            return [Note(f"[codex] {item.get('message') or 'error'}")]
        call = self._tool_call(item)
        if call is None:
            rest = {key: value for key, value in item.items() if key not in ("id", "type")}
            return [Note(f"[codex] {item_type}: {_short(rest)}")]
        said: list[Event] = []
        if item_id not in self._shown:
            self._shown.add(item_id)
            said.append(call)
        if done:
            said += self._tool_output(item)
        return said

    @staticmethod
    def _tool_call(item: dict[str, Any]) -> ToolCall | None:
        item_type = item["type"]
        if item_type == "command_execution":
            return ToolCall("shell", _short(_unwrapped_shell_command(str(item.get("command") or ""))))
        if item_type == "file_change":
            changes = item.get("changes") or []
            return ToolCall(
                "edit", _short(", ".join(f"{c.get('kind', '?')} {c.get('path', '?')}" for c in changes))
            )
        if item_type == "mcp_tool_call":
            return ToolCall(
                f"{item.get('server', '?')}.{item.get('tool', '?')}", _short(item.get("arguments") or {})
            )
        if item_type == "web_search":
            return ToolCall("web_search", _short(item.get("query") or ""))
        return None

    @staticmethod
    def _tool_output(item: dict[str, Any]) -> list[Event]:
        failed = item.get("status") in ("failed", "declined")
        if item["type"] == "command_execution":
            code = item.get("exit_code")
            output = _short(item.get("aggregated_output") or "")
            output = output or (
                f"exit code {code}" if isinstance(code, int) else str(item.get("status") or "")
            )
            return [ToolOutput(output, failed or (isinstance(code, int) and code != 0))]
        if item["type"] == "mcp_tool_call":
            error = item.get("error") or {}
            result = item.get("result") or {}
            text = error.get("message") if failed and error else _content_text(result.get("content"))
            return [ToolOutput(_short(text or item.get("status") or ""), failed)]
        if item["type"] == "file_change":
            return [ToolOutput(str(item.get("status") or "done"), failed)]
        return []


def _api_error_message(message: Any) -> str:
    """Codex passes on the model API's error body as it came: its message, when it is JSON that has one."""
    text = str(message or "")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return text


def _unwrapped_shell_command(command: str) -> str:
    """`bash -lc 'cat x'` as `cat x`: Codex runs every command through a shell, which says nothing."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shells = ("bash", "sh", "zsh", "dash")
    if len(words) == 3 and os.path.basename(words[0]) in shells and words[1] in ("-c", "-lc"):
        return words[2]
    return command


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class GeminiCli(Adapter):
    """`gemini --output-format stream-json --yolo --skip-trust`: one JSON object per line, of type
    init (session_id, model), message (role user: the prompt echoed back whole; role assistant: a
    text delta, "delta": true), tool_use (tool_name, tool_id, parameters), tool_result (tool_id,
    status success|error, output, error{type,message}), error (severity warning|error, message: not
    fatal by itself) and result (status success|error, error{type,message} when it failed, stats
    with input_tokens/output_tokens/total_tokens/cached/tool_calls and per-model totals).

    The stream has no per-turn usage and no cost: tokens are known only from the result line, so a
    token limit can only be checked at the end. Turns are counted here as model responses: a turn
    starts at the first assistant text or tool_use after the prompt or after tool results (the CLI
    runs all tool calls of a response after the response has streamed, so tool_use lines of one
    response always come before its tool_result lines).

    --skip-trust is needed: without it, in a folder that is not trusted (folder trust is on by
    default), --yolo is silently downgraded and then the headless run stops with exit code 55.
    """

    binary = "gemini"

    def __init__(self) -> None:
        self._delta: list[str] = []  # the assistant message being streamed
        self._answer = ""  # the last complete assistant message
        self._in_turn = False
        self._last_error: str | None = None

    def command(self, model: str | None, extra: list[str], env: Mapping[str, str]) -> list[str]:
        argv = [self.binary, "--output-format", "stream-json", "--yolo", "--skip-trust"]
        if model:
            argv += ["--model", model]
        return argv + extra

    def _flush(self) -> list[Event]:
        if not self._delta:
            return []
        text, self._delta = "".join(self._delta), []
        if not text.strip():
            return []
        self._answer = text
        return [Text(text)]

    def _turn(self, usage: Usage) -> None:
        if not self._in_turn:
            self._in_turn = True
            usage.turns += 1

    def parse(self, event: dict[str, Any], usage: Usage) -> list[Event]:
        kind = event.get("type")
        if kind == "message":
            if event.get("role") != "assistant":
                return []  # the prompt, echoed back whole: not shown again
            self._turn(usage)
            content = event.get("content")
            if isinstance(content, str):
                self._delta.append(content)
                if not event.get("delta", False):
                    return self._flush()
            return []
        if kind == "tool_use":
            said = self._flush()
            self._turn(usage)
            name = str(event.get("tool_name") or "?")
            return [*said, ToolCall(name, _short(event.get("parameters") or {}))]
        if kind == "tool_result":
            said = self._flush()
            self._in_turn = False
            failed = event.get("status") == "error"
            error = event.get("error") or {}
            text = event.get("output")
            if not isinstance(text, str) or not text:  # write_file, for one, reports no output
                text = str(error.get("message") or "") if failed else ""
            return [*said, ToolOutput(_short(text or str(event.get("status") or "")), failed)]
        if kind == "error":
            said = self._flush()
            message = str(event.get("message") or "")
            severity = str(event.get("severity") or "error")
            if severity == "error":
                self._last_error = message
            return [*said, Note(f"[gemini-cli] {severity}: {message}")]
        if kind == "result":
            said = self._flush()
            stats = event.get("stats") or {}
            if stats:
                usage.input_tokens = _int(stats.get("input_tokens"))
                # total = prompt + candidates + thoughts (+ tool-use prompt): what is not input is output
                usage.output_tokens = max(
                    _int(stats.get("output_tokens")),
                    _int(stats.get("total_tokens")) - _int(stats.get("input_tokens")),
                )
            error = None
            if event.get("status") != "success":
                detail = event.get("error") or {}
                if detail:
                    error = _gemini_error(detail)
                else:  # an invalid (e.g. empty) model response: the reason came in an error line
                    error = self._last_error or str(event.get("status") or "error")
            return [*said, Final(self._answer, error)]
        if kind == "init":
            session, model = event.get("session_id") or "?", event.get("model") or "?"
            return [Note(f"[gemini-cli] session {session}, model {model}")]
        return []  # whatever a later version adds


def _gemini_error(detail: dict[str, Any]) -> str:
    """A result's error as one line. A model API error reads `[API Error: <the API's JSON body>]`:
    its status and message are taken out of it."""
    kind = str(detail.get("type") or "error")
    message = str(detail.get("message") or "")
    prefix = "[API Error: "
    if message.startswith(prefix) and message.endswith("]"):
        body = message[len(prefix) : -1]
        try:
            api = json.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            api = {}
        if isinstance(api, dict) and api.get("message"):
            code = api.get("code")
            status = api.get("status")
            what = " ".join(str(x) for x in (code, status) if x)
            return f"model API error{f' ({what})' if what else ''}: {api['message']}"
        return f"model API error: {body}"
    return f"{kind}: {message}" if message else kind


class OpenCode(Adapter):
    """`opencode run --format json --auto`: one JSON object per line, each {type, timestamp (ms),
    sessionID, part|error}. Types: step_start (a model call begins), text (a complete text part:
    part.text), reasoning (only with --thinking), tool_use (a finished tool call: part.tool,
    part.callID, part.state {status completed|error, input, output | error, metadata, title}),
    step_finish (part.reason tool-calls|stop|length|..., part.tokens {input, output, reasoning,
    cache{read, write}}, part.cost in USD from the model's price table, 0 when it has none) and
    error (error {name, data{message, statusCode, isRetryable, ...}}). There is no final line: the
    answer is the last text part, and the run ends with exit code 0, or 1 after an error line.

    Tool calls are reported once, when they have finished, so the call and its output come from one
    line. part.tokens.input excludes cache reads and writes, and part.tokens.output excludes
    reasoning: they are added back here, as the ClaudeCode adapter does for Claude's usage.
    """

    binary = "opencode"

    def __init__(self) -> None:
        self._answer = ""

    def command(self, model: str | None, extra: list[str], env: Mapping[str, str]) -> list[str]:
        argv = [self.binary, "run", "--format", "json", "--auto"]
        if model:
            argv += ["--model", model]  # provider/model, e.g. anthropic/claude-sonnet-4-5
        return argv + extra

    def parse(self, event: dict[str, Any], usage: Usage) -> list[Event]:
        kind = event.get("type")
        part = event.get("part") or {}
        if kind == "step_start":
            usage.turns += 1
            return []
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                self._answer = text
                return [Text(text)]
            return []
        if kind == "tool_use":
            state = part.get("state") or {}
            call = ToolCall(str(part.get("tool") or "?"), _short(state.get("input") or {}))
            if state.get("status") == "error":
                return [call, ToolOutput(_short(str(state.get("error") or "error")), True)]
            output = state.get("output")
            text = output if isinstance(output, str) else ""
            code = (state.get("metadata") or {}).get("exit")
            if isinstance(code, int) and code != 0:
                text = f"[exit {code}] {text}"
            return [call, ToolOutput(_short(text))]
        if kind == "step_finish":
            tokens = part.get("tokens") or {}
            cache = tokens.get("cache") or {}
            usage.input_tokens += (
                _int(tokens.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
            )
            usage.output_tokens += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
            cost = part.get("cost")
            # 0 is also what a model without a price (a custom provider's) costs: no cost is known then
            if isinstance(cost, int | float) and not isinstance(cost, bool) and (cost or usage.cost_usd):
                usage.cost_usd = (usage.cost_usd or 0.0) + float(cost)
            return []
        if kind == "reasoning":  # only with --thinking
            text = part.get("text")
            return (
                [Note(f"[opencode] thinking: {_short(text, 400)}")]
                if isinstance(text, str) and text.strip()
                else []
            )
        if kind == "error":
            error = event.get("error") or {}
            data = error.get("data") or {}
            message = data.get("message") if isinstance(data, dict) else None
            name = str(error.get("name") or "error")
            return [Final(self._answer, f"{name}: {message}" if message else name)]
        return []  # whatever a later version adds


ADAPTERS: dict[str, type[Adapter]] = {
    "claude-code": ClaudeCode,
    "codex": Codex,
    "gemini-cli": GeminiCli,
    "opencode": OpenCode,
}


# --- the workspace: clone before, commit and push after -------------------------------------------------


@dataclasses.dataclass(slots=True)
class Repository:
    url: str
    ref: str | None
    branch: str | None
    push: bool
    credentials: Path | None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Repository | None:
        url = env.get("TASKYARD_REPO_URL", "").strip()
        if not url:
            return None
        credentials = env.get("TASKYARD_GIT_CREDENTIALS", "").strip()
        return cls(
            url=url,
            ref=env.get("TASKYARD_REPO_REF", "").strip() or None,
            branch=env.get("TASKYARD_REPO_BRANCH", "").strip() or None,
            push=env.get("TASKYARD_REPO_PUSH", "").strip().lower() == "true",
            credentials=Path(credentials) if credentials else None,
        )


class Git:
    """git in the workspace, with the Task's credentials and nothing of the image's configuration."""

    def __init__(
        self, workspace: Path, repository: Repository, home: Path, env: dict[str, str] | None = None
    ) -> None:
        self.workspace = workspace
        self.repository = repository
        self.env = {
            **(os.environ if env is None else env),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(home),
            "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "taskyard"),
            "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "agent@taskyard.dev"),
        }
        self.env["GIT_COMMITTER_NAME"] = self.env["GIT_AUTHOR_NAME"]
        self.env["GIT_COMMITTER_EMAIL"] = self.env["GIT_AUTHOR_EMAIL"]
        self.options: list[str] = ["-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"]
        secret = repository.credentials
        if secret is not None and (secret / "token").is_file():
            # The token never reaches a command line or the remote URL: git asks this helper for it.
            token = shlex.quote(str(secret / "token"))
            helper = (
                f"!f() {{ echo username=x-access-token; printf 'password=%s\\n' \"$(cat {token})\"; }}; f"
            )
            self.options += ["-c", f"credential.helper={helper}"]
        if secret is not None and (secret / "ssh-privatekey").is_file():
            key = home / ".ssh-key"
            key.write_bytes((secret / "ssh-privatekey").read_bytes())
            key.chmod(0o600)  # ssh refuses a key others can read; a Secret volume's mode may allow that
            known_hosts = secret / "known_hosts"
            # Host keys from the Secret when it has them; else the first key seen is trusted.
            hosts, checking = (
                (known_hosts, "yes") if known_hosts.is_file() else (home / "known_hosts", "accept-new")
            )
            checking = f"-o UserKnownHostsFile={shlex.quote(str(hosts))} -o StrictHostKeyChecking={checking}"
            self.env["GIT_SSH_COMMAND"] = f"ssh -i {shlex.quote(str(key))} -o IdentitiesOnly=yes {checking}"

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["git", *self.options, *args],
            cwd=self.workspace,
            env=self.env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
        )
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise SetupFailed(f"git {args[0]} failed: {' / '.join(detail) or f'exit code {done.returncode}'}")
        return done.stdout.strip()

    def prepare(self) -> str:
        """Clones the repository into the workspace (or, on a retry over a kept workspace, reuses the
        clone), checks out the ref and the work branch. Returns the commit the agent starts from."""
        repository = self.repository
        if (self.workspace / ".git").is_dir():
            self.run("fetch", "--quiet", "origin")
        elif any(self.workspace.iterdir()):
            raise SetupFailed(f"{self.workspace} is not empty and is not a clone of {repository.url}")
        else:
            self.run("clone", "--quiet", "--no-checkout", repository.url, ".")
        if repository.ref:
            self.run("fetch", "--quiet", "origin", repository.ref)
            self.run("checkout", "--quiet", "--force", "FETCH_HEAD")
        else:
            self.run("checkout", "--quiet", "--force", "origin/HEAD")
        base = self.run("rev-parse", "HEAD")
        if repository.branch:
            remote_branch = self.run("ls-remote", "--heads", "origin", repository.branch)
            if remote_branch and not repository.ref:
                self.run("fetch", "--quiet", "origin", repository.branch)
                self.run("checkout", "--quiet", "--force", "-B", repository.branch, "FETCH_HEAD")
                base = self.run("rev-parse", "HEAD")
            else:
                self.run("checkout", "--quiet", "-B", repository.branch)
        return base

    def finish(self, base: str, task: str, summary: str) -> dict[str, Any]:
        """What the agent changed since ``base``; committed on the work branch and pushed when asked."""
        record: dict[str, Any] = {}
        branch = self.run("rev-parse", "--abbrev-ref", "HEAD", check=False)
        self.run("add", "--all")
        staged = self.run("diff", "--cached", "--name-only", base).splitlines()
        if self.repository.push and self.run("status", "--porcelain"):
            title = f"taskyard: {task}" if task else "taskyard"
            body = summary.strip()[:1000]
            self.run("commit", "--quiet", "--no-verify", "-m", title, *(["-m", body] if body else []))
        head = self.run("rev-parse", "HEAD")
        if self.repository.push and head != base:
            if not self.repository.branch:
                raise SetupFailed("push is set but no branch was given to push to")
            self.run("push", "--quiet", "origin", f"HEAD:refs/heads/{self.repository.branch}")
            record["pushed"] = True
        record["branch"] = branch if branch != "HEAD" else None
        record["commit"] = head
        record["changedFiles"] = sorted(
            set(staged) | set(self.run("diff", "--name-only", base, "HEAD").splitlines())
        )
        return {k: v for k, v in record.items() if v is not None}


# --- running the CLI ------------------------------------------------------------------------------------


def readable(event: Event) -> Iterator[str]:
    """The log lines an event reads as, for `kubectl logs` and the Task's log tail."""
    if isinstance(event, Text):
        yield from event.text.rstrip("\n").splitlines() or [""]
    elif isinstance(event, ToolCall):
        yield f"→ {event.name} {event.detail}".rstrip()
    elif isinstance(event, ToolOutput):
        yield f"  ← {'error: ' if event.error else ''}{event.text}".rstrip()
    elif isinstance(event, Final) and event.error:
        yield f"[taskyard-agent] the agent ended with {event.error}"
    elif isinstance(event, Note):
        yield from event.text.rstrip("\n").splitlines()


@dataclasses.dataclass
class Outcome:
    exit_code: int
    usage: Usage
    summary: str = ""
    limit: str | None = None
    error: str | None = None


class Run:
    """The CLI as a child process whose stdout is read line by line."""

    def __init__(self, adapter: Adapter, limits: Limits, out: IO[str]) -> None:
        self.adapter = adapter
        self.limits = limits
        self.out = out
        self.usage = Usage()
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped_for: str | None = None
        self.signalled: int | None = None

    def start(self, argv: list[str], prompt: Path, workspace: Path, env: dict[str, str]) -> None:
        try:
            with prompt.open("rb") as stdin:
                self.process = subprocess.Popen(
                    argv, stdin=stdin, stdout=subprocess.PIPE, cwd=workspace, env=env, start_new_session=True
                )
        except FileNotFoundError:
            raise SetupFailed(f"{argv[0]} is not installed in this image") from None

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stops the CLI and whatever it started (its own process group), harder after a grace period."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return

        def kill_later() -> None:
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    def follow(self, lines: Iterable[bytes]) -> Outcome:
        summary, error = "", None
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            events = self._events(line)
            if events is None:  # not one of the CLI's events: its own words, kept as they are
                print(line, file=self.out, flush=True)
                continue
            for event in events:
                for text in readable(event):
                    print(text, file=self.out, flush=True)
                if isinstance(event, Text):
                    summary = event.text
                elif isinstance(event, Final):
                    summary, error = event.summary or summary, event.error
            if self.stopped_for is None:
                passed = self.limits.passed(self.usage)
                if passed is not None:
                    self.stopped_for = passed
                    print(f"[taskyard-agent] stopping the agent: {passed}", file=self.out, flush=True)
                    self.stop()
        return Outcome(0, self.usage, summary, self.stopped_for, error)

    def _events(self, line: str) -> list[Event] | None:
        if not line.startswith("{"):
            return None
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        try:
            return self.adapter.parse(event, self.usage)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None  # a shape this version of the adapter does not know: shown as it came

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()


def result_record(outcome: Outcome, extra: dict[str, Any]) -> str:
    """The JSON the operator reads back, within what the kubelet keeps of a termination message."""
    record: dict[str, Any] = {"taskyard": 1, "summary": outcome.summary[-SUMMARY_LIMIT_CHARS:]}
    record["usage"] = outcome.usage.as_record()
    if outcome.limit:
        record["limit"] = outcome.limit
    if outcome.error:
        record["error"] = outcome.error
    record.update(extra)

    def encoded() -> str:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))

    files = record.get("changedFiles")
    while len(encoded().encode()) > RESULT_LIMIT_BYTES and files:
        files.pop()
        record["changedFilesTruncated"] = True
    while len(encoded().encode()) > RESULT_LIMIT_BYTES and record["summary"]:
        record["summary"] = record["summary"][len(record["summary"]) // 4 + 1 :]
    return encoded()


def trusting_workspace(env: dict[str, str], workspace: Path) -> dict[str, str]:
    """``env`` with git told to trust the workspace, for the entrypoint's git and the CLI's alike.

    A volume is owned by root and shared through the pod's fsGroup, so git, seeing a repository that
    another user owns, refuses to work in it ("dubious ownership"). The workspace is the pod's own.
    Configuration from the environment is as trusted as the command line's."""
    count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    return {
        **env,
        "GIT_CONFIG_COUNT": str(count + 1),
        f"GIT_CONFIG_KEY_{count}": "safe.directory",
        f"GIT_CONFIG_VALUE_{count}": str(workspace),
    }


def writable_home(env: dict[str, str]) -> Path:
    """$HOME when the agent may write there, else a fresh one under the temporary directory: the CLIs
    keep their settings and sessions in it, and on a read-only root filesystem the image's home is
    read-only while /tmp is the pod's own."""
    home = Path(env.get("HOME") or "/nonexistent")
    if home.is_dir() and os.access(home, os.W_OK | os.X_OK):
        return home
    fallback = Path(env.get("TMPDIR") or "/tmp") / "home"
    fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    return fallback


def main(argv: list[str], env: dict[str, str] | None = None, out: IO[str] = sys.stdout) -> int:
    env = dict(os.environ if env is None else env)
    if not argv or argv[0] not in ADAPTERS:
        print(f"usage: taskyard-agent {{{','.join(ADAPTERS)}}} [CLI arguments...]", file=sys.stderr)
        return EXIT_SETUP_FAILED
    adapter = ADAPTERS[argv[0]]()
    prompt = Path(env.get("TASKYARD_PROMPT_FILE", "/etc/taskyard/prompt"))
    result_file = Path(env.get("TASKYARD_RESULT_FILE", "/dev/termination-log"))
    workspace = Path(env.get("TASKYARD_WORKSPACE", "/workspace"))
    home = writable_home(env)
    env["HOME"] = str(home)
    env = trusting_workspace(env, workspace)
    run = Run(adapter, Limits(), out)
    git: Git | None = None
    base = ""

    def on_signal(signum: int, _frame: Any) -> None:
        run.signalled = signum
        run.stop(signum)  # the CLI gets the pod's grace period too; its last words are still read

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run.limits = Limits.from_env(env)
        if not prompt.is_file():
            raise SetupFailed(f"the prompt file {prompt} does not exist")
        repository = Repository.from_env(env)
        if repository is not None:
            git = Git(workspace, repository, home, env)
            base = git.prepare()
            print(f"[taskyard-agent] {repository.url} at {base[:12]} in {workspace}", file=out, flush=True)
        run.start(adapter.command(env.get("TASK_MODEL") or None, argv[1:], env), prompt, workspace, env)
    except SetupFailed as error:
        print(f"[taskyard-agent] setup failed: {error}", file=out, flush=True)
        _write(result_file, result_record(Outcome(EXIT_SETUP_FAILED, Usage(), error=f"setup: {error}"), {}))
        return EXIT_SETUP_FAILED

    assert run.process is not None and run.process.stdout is not None
    outcome = run.follow(run.process.stdout)
    code = run.wait()
    extra: dict[str, Any] = {}
    if git is not None and run.signalled is None:
        try:
            task = env.get("TASKYARD_TASK") or env.get("TASK_NAME", "")
            extra = git.finish(base, task, outcome.summary)
        except SetupFailed as error:
            print(f"[taskyard-agent] {error}", file=out, flush=True)
            outcome.error = outcome.error or str(error)
            code = code or EXIT_SETUP_FAILED
    _write(result_file, result_record(outcome, extra))
    if outcome.limit:
        return EXIT_LIMIT_REACHED
    if run.signalled is not None:
        return 128 + run.signalled
    return code if code >= 0 else 128 - code


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:  # the record is a bonus; the log and the exit code still say what happened
        print(f"[taskyard-agent] could not write the result record to {path}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
