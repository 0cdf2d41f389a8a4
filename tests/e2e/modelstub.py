#!/usr/bin/env python3
"""A model-API server that replays scripted conversations, so the real agent CLIs can be run end to end
without a model provider.

    python3 modelstub.py [--host 0.0.0.0] [--port 8080]

It speaks the providers' streaming wire formats as their documentation describes them:

    POST .../v1/messages             Anthropic Messages API (SSE when "stream": true, else JSON)
    POST .../v1/responses            OpenAI Responses API (Codex)
    POST .../v1/chat/completions     OpenAI Chat Completions

The scenario is the base URL's path: a CLI given the base URL ``http://stub:8080/s/edit`` (Anthropic)
or ``http://stub:8080/s/edit/v1`` (OpenAI) sends ``/s/edit/v1/messages`` or ``/s/edit/v1/responses``.
Path segments of the form ``key=value`` after the scenario name set its parameters (values
percent-encoded), e.g. ``/s/edit/file=notes.txt/content=hi%20there``. Without ``/s/<name>`` the
scenario is ``answer``.

    answer     the model answers with text (parameter: answer)
    edit       turn 1 writes a file (file, content), turn 2 runs a shell command (command; by default
               it prints the file and writes ran.txt, so a test can see that it ran), turn 3 answers
    endless    every turn runs `echo turn N`; it never ends (for turn limits)
    slow       every turn runs `echo started; sleep 600` (seconds, or command): busy until stopped
    fail       every model request fails with HTTP `status` (default 400, which the CLIs do not retry)

The turn is worked out from the request alone: one more than the tool results already in the
conversation. Retries, parallel clients and restarts of the server all see the same script.

A request that offers no tools (a CLI's side request: a title, a summary, a quota probe) is answered
with a short text, whatever the scenario. The tool a step uses is chosen among the tools the request
offers, and its arguments are built from that tool's JSON schema, so the same script drives Claude
Code (Write, Bash), Codex (apply_patch and exec_command, or in its code mode a JavaScript `exec` that
calls them) and OpenCode (write, bash).

Anything else (model lists, token counts, telemetry) gets a harmless answer. Every request is
recorded: ``GET /_requests`` returns them as a JSON list, oldest first, each with its path, scenario,
api, turn, model, reply, auth (how the key came) and key (a digest of it, never the key itself);
``DELETE /_requests`` forgets them.
``--dump DIR`` also keeps every request body, to see what a CLI really sends.

Every model answer carries usage: INPUT_TOKENS and OUTPUT_TOKENS (or the ``input_tokens`` and
``output_tokens`` parameters), so the CLIs report tokens and, where they know the model's price, cost.

Standard library only: it runs from a plain python3 image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_SCENARIO = "answer"
FAIL_SCENARIO = "fail"
DEFAULT_FILE = "hello.txt"
DEFAULT_CONTENT = "hello from the model stub\n"
DEFAULT_ANSWER = "Done."
INPUT_TOKENS = 100
OUTPUT_TOKENS = 20
SIDE_ANSWER = "OK"
REQUESTS_KEPT = 5000
STREAM_CHUNK_CHARS = 16  # text and tool arguments arrive in pieces, as from a real model

# Tools that run a shell command, and tools that write a file, by the names the CLIs give them.
SHELL_TOOLS = ("bash", "shell", "shell_command", "exec_command", "run_shell_command", "local_shell")
WRITE_TOOLS = ("write", "write_file", "create_file")
PATCH_TOOLS = ("apply_patch",)


# --- the scripts ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Say:
    """The model's last word for this turn: text, no tool."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class WriteFile:
    path: str
    content: str
    preface: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunShell:
    command: str
    preface: str


Step = Say | WriteFile | RunShell


def scripted_step(scenario: str, turn: int, params: dict[str, str]) -> Step:
    """What the model does on ``turn`` (1 for the first request of a conversation)."""
    if scenario == "edit":
        file = params.get("file", DEFAULT_FILE)
        if turn == 1:
            content = params.get("content", DEFAULT_CONTENT)
            return WriteFile(file, content, f"I will write {file}.")
        if turn == 2:
            command = params.get("command", f"cat {file} && echo ran-by-agent > ran.txt")
            return RunShell(command, "Now I will run a command.")
        return Say(params.get("answer", f"Done: wrote {file} and ran the command."))
    if scenario == "endless":
        return RunShell(f"echo turn {turn}", f"Turn {turn}: one more command.")
    if scenario == "slow":
        # Every turn: a CLI whose shell tool gives up on a long command (Claude Code's Bash after its
        # timeout, Codex's exec_command after its yield time) is sent back to sleep, so the agent is
        # busy until it is stopped. Not a bare `sleep`, which Claude Code refuses to run.
        command = f"echo started; sleep {params.get('seconds', '600')}"
        return RunShell(params.get("command", command), "This will take a while.")
    if scenario == DEFAULT_SCENARIO:
        return Say(params.get("answer", DEFAULT_ANSWER))
    return Say(f"The model stub has no scenario {scenario!r}.")


# --- requests -----------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Route:
    scenario: str
    params: dict[str, str]
    endpoint: str  # the API path without the scenario prefix and without /v1, e.g. "/messages"


def route(path: str) -> Route:
    """Splits ``/s/<scenario>[/key=value...][/v1]/<endpoint>``."""
    segments = urlsplit(path).path.split("/")[1:]
    scenario, params = DEFAULT_SCENARIO, {}
    if len(segments) >= 2 and segments[0] == "s":
        scenario = unquote(segments[1])
        segments = segments[2:]
        while segments and "=" in segments[0]:
            key, value = segments.pop(0).split("=", 1)
            params[unquote(key)] = unquote(value)
    if segments and segments[0] == "v1":
        segments = segments[1:]
    return Route(scenario, params, "/" + "/".join(segments))


@dataclasses.dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: dict[str, Any]
    freeform: bool = False  # a Responses API "custom" tool: its input is plain text, not JSON
    description: str = ""


def anthropic_tools(body: dict[str, Any]) -> list[Tool]:
    return [
        Tool(tool["name"], tool.get("input_schema") or {})
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("name")
    ]


def responses_tools(body: dict[str, Any]) -> list[Tool]:
    """The tools of a Responses request: in ``tools``, and (as newer Codex versions send them) in
    ``additional_tools`` items of the input, either of them grouped in namespaces."""
    offered = list(body.get("tools") or [])
    for item in body.get("input") if isinstance(body.get("input"), list) else []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            offered += item.get("tools") or []
    tools = []
    while offered:
        tool = offered.pop(0)
        if not isinstance(tool, dict) or not tool.get("name"):
            continue
        if tool.get("type") == "namespace":
            offered += tool.get("tools") or []
        elif tool.get("type") == "function":
            tools.append(Tool(tool["name"], tool.get("parameters") or {}))
        elif tool.get("type") == "custom":
            tools.append(
                Tool(tool["name"], {}, freeform=True, description=str(tool.get("description") or ""))
            )
    return tools


def chat_tools(body: dict[str, Any]) -> list[Tool]:
    return [
        Tool(tool["function"]["name"], tool["function"].get("parameters") or {})
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and tool["function"].get("name")
    ]


def anthropic_turn(body: dict[str, Any]) -> int:
    results = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            results += sum(
                1 for block in content if isinstance(block, dict) and block.get("type") == "tool_result"
            )
    return results + 1


def responses_turn(body: dict[str, Any]) -> int:
    items = body.get("input")
    if not isinstance(items, list):
        return 1
    outputs = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")
    return 1 + sum(1 for item in items if isinstance(item, dict) and item.get("type") in outputs)


def chat_turn(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return 1 + sum(1 for message in messages if isinstance(message, dict) and message.get("role") == "tool")


WORKING_DIRECTORY = (
    re.compile(r"<cwd>\s*([^<\s][^<]*?)\s*</cwd>"),
    re.compile(r"(?:Primary working directory|Current working directory|Working directory):\s*(/\S+)"),
)


def working_directory(body: dict[str, Any]) -> str | None:
    """The directory the CLI says it works in (in its system prompt or context), for tools that want an
    absolute path."""
    for text in _strings(body):
        for pattern in WORKING_DIRECTORY:
            found = pattern.search(text)
            if found:
                return found.group(1).strip()
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# --- steps as tool calls --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """A tool call: JSON arguments for a function tool, or text input for a freeform one."""

    tool: Tool
    arguments: dict[str, Any] | None = None
    text_input: str | None = None

    def arguments_json(self) -> str:
        return json.dumps(self.arguments or {}, ensure_ascii=False)


def _find(tools: list[Tool], names: tuple[str, ...]) -> Tool | None:
    by_name = {tool.name.lower(): tool for tool in tools}
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def _property(schema: dict[str, Any], *candidates: str) -> str | None:
    properties = schema.get("properties") or {}
    return next((name for name in candidates if name in properties), None)


def shell_call(tool: Tool, command: str) -> Call:
    """Arguments for a shell tool, shaped by its schema: a command string or an argv array."""
    if tool.freeform:
        return Call(tool, text_input=command)
    properties = tool.schema.get("properties") or {}
    key = _property(tool.schema, "command", "cmd", "script") or "command"
    value: Any = command
    if (properties.get(key) or {}).get("type") == "array":
        value = ["bash", "-lc", command]
    arguments: dict[str, Any] = {key: value}
    if "description" in properties:
        arguments["description"] = "Run a command for the model stub"
    return Call(tool, arguments)


def add_file_patch(path: str, content: str) -> str:
    """An apply_patch envelope that adds one file."""
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def step_call(step: WriteFile | RunShell, tools: list[Tool], cwd: str | None) -> Call | None:
    """The tool call that carries out ``step`` with what the request offers, or None."""
    shell = _find(tools, SHELL_TOOLS)
    script = _script_tool(tools) if shell is None else None
    if isinstance(step, RunShell):
        if shell is not None:
            return shell_call(shell, step.command)
        return Call(script, text_input=script_running(step.command)) if script else None
    writer = _find(tools, WRITE_TOOLS)
    if writer is not None:
        path_key = _property(writer.schema, "file_path", "filePath", "path") or "file_path"
        content_key = _property(writer.schema, "content", "contents", "text") or "content"
        absolute = step.path if step.path.startswith("/") or cwd is None else f"{cwd.rstrip('/')}/{step.path}"
        return Call(writer, {path_key: absolute, content_key: step.content})
    patcher = _find(tools, PATCH_TOOLS)
    if patcher is not None:
        patch = add_file_patch(step.path, step.content)
        if patcher.freeform:
            return Call(patcher, text_input=patch)
        key = _property(patcher.schema, "input", "patch") or "input"
        return Call(patcher, {key: patch})
    if script is not None:
        return Call(script, text_input=script_patching(add_file_patch(step.path, step.content)))
    if shell is not None:
        return shell_call(shell, f"printf '%s' {shlex.quote(step.content)} > {shlex.quote(step.path)}")
    return None


def _script_tool(tools: list[Tool]) -> Tool | None:
    """Codex's code mode: one freeform tool, ``exec``, that runs JavaScript in which the real tools
    (exec_command, apply_patch, ...) are functions of a global ``tools`` object."""
    return next(
        (tool for tool in tools if tool.name == "exec" and tool.freeform and "tools." in tool.description),
        None,
    )


def script_running(command: str) -> str:
    # json.dumps makes a valid JavaScript string literal.
    return f"const result = await tools.exec_command({{cmd: {json.dumps(command)}}});\ntext(result.output);\n"


def script_patching(patch: str) -> str:
    return f"text(await tools.apply_patch({json.dumps(patch)}));\n"


@dataclasses.dataclass(slots=True)
class Reply:
    """One model answer: optional text, then optionally one tool call."""

    text: str
    call: Call | None = None

    @property
    def summary(self) -> str:
        return f"tool {self.call.tool.name}" if self.call else "text"


def plan_reply(scenario: str, params: dict[str, str], turn: int, tools: list[Tool], body: dict) -> Reply:
    if not tools:
        return Reply(params.get("side_answer", SIDE_ANSWER))
    step = scripted_step(scenario, turn, params)
    if isinstance(step, Say):
        return Reply(step.text)
    call = step_call(step, tools, working_directory(body))
    if call is None:
        offered = ", ".join(tool.name for tool in tools)
        return Reply(f"The model stub wanted a tool for {type(step).__name__} but was offered: {offered}.")
    return Reply(step.preface, call)


def _pieces(text: str) -> Iterator[str]:
    for start in range(0, len(text), STREAM_CHUNK_CHARS):
        yield text[start : start + STREAM_CHUNK_CHARS]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    input: int
    output: int


# --- Anthropic Messages API -------------------------------------------------------------------------------


def anthropic_message(reply: Reply, model: str, tokens: Tokens) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    if reply.call:
        content.append(
            {
                "type": "tool_use",
                "id": _id("toolu"),
                "name": reply.call.tool.name,
                "input": reply.call.arguments,
            }
        )
    return {
        "id": _id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.call else "end_turn",
        "stop_sequence": None,
        "usage": anthropic_usage(tokens.input, tokens.output),
    }


def anthropic_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def anthropic_events(reply: Reply, model: str, tokens: Tokens) -> Iterator[tuple[str, dict[str, Any]]]:
    """The SSE events of a streamed message: message_start, a start/deltas/stop per content block,
    message_delta with the stop reason and the output tokens, message_stop."""
    message = anthropic_message(reply, model, tokens)
    start = {**message, "content": [], "stop_reason": None, "usage": anthropic_usage(tokens.input, 1)}
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _pieces(block["text"]):
                delta = {"type": "text_delta", "text": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            opened = {**block, "input": {}}
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opened},
            )
            for piece in _pieces(json.dumps(block["input"], ensure_ascii=False)):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": tokens.output},
        },
    )
    yield "message_stop", {"type": "message_stop"}


# --- OpenAI Responses API ---------------------------------------------------------------------------------


def responses_items(reply: Reply) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.text:
        items.append(
            {
                "id": _id("msg"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
            }
        )
    call = reply.call
    if call is not None and call.tool.freeform:
        items.append(
            {
                "id": _id("ctc"),
                "type": "custom_tool_call",
                "status": "completed",
                "call_id": _id("call"),
                "name": call.tool.name,
                "input": call.text_input or "",
            }
        )
    elif call is not None:
        items.append(
            {
                "id": _id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": _id("call"),
                "name": call.tool.name,
                "arguments": call.arguments_json(),
            }
        )
    return items


def responses_usage(tokens: Tokens) -> dict[str, Any]:
    return {
        "input_tokens": tokens.input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": tokens.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens.input + tokens.output,
    }


def responses_object(status: str, model: str, output: list, usage: dict | None, id_: str) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
        "error": None,
        "incomplete_details": None,
    }


_TOOL_CALL_STREAMS = {
    "function_call": ("arguments", "response.function_call_arguments"),
    "custom_tool_call": ("input", "response.custom_tool_call_input"),
}


def responses_events(reply: Reply, model: str, tokens: Tokens) -> Iterator[tuple[str, dict[str, Any]]]:
    """response.created, in_progress, then per output item: output_item.added, its content (text parts
    and output_text deltas, or function-call argument deltas), output_item.done; response.completed."""
    response_id = _id("resp")
    items = responses_items(reply)
    yield (
        "response.created",
        {
            "type": "response.created",
            "response": responses_object("in_progress", model, [], None, response_id),
        },
    )
    yield (
        "response.in_progress",
        {
            "type": "response.in_progress",
            "response": responses_object("in_progress", model, [], None, response_id),
        },
    )
    for index, item in enumerate(items):
        item_id = item["id"]
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield (
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "content": []},
                },
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            yield (
                "response.content_part.added",
                {"type": "response.content_part.added", **where, "part": part},
            )
            for piece in _pieces(text):
                yield (
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", **where, "delta": piece},
                )
            yield "response.output_text.done", {"type": "response.output_text.done", **where, "text": text}
            done_part = {**part, "text": text}
            yield (
                "response.content_part.done",
                {"type": "response.content_part.done", **where, "part": done_part},
            )
        else:
            # A function call streams its JSON arguments, a custom (freeform) tool call its input:
            # the same events under other names.
            field, events = _TOOL_CALL_STREAMS[item["type"]]
            yield (
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", field: ""},
                },
            )
            where = {"item_id": item_id, "output_index": index}
            for piece in _pieces(item[field]):
                kind = f"{events}.delta"
                yield kind, {"type": kind, **where, "delta": piece}
            kind = f"{events}.done"
            yield kind, {"type": kind, **where, field: item[field]}
        yield (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": index, "item": item},
        )
    completed = responses_object("completed", model, items, responses_usage(tokens), response_id)
    yield "response.completed", {"type": "response.completed", "response": completed}


# --- OpenAI Chat Completions ------------------------------------------------------------------------------


def chat_usage(tokens: Tokens) -> dict[str, int]:
    return {
        "prompt_tokens": tokens.input,
        "completion_tokens": tokens.output,
        "total_tokens": tokens.input + tokens.output,
    }


def chat_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    if reply.call is None:
        return []
    arguments = reply.call.arguments_json() if not reply.call.tool.freeform else reply.call.text_input
    return [
        {
            "id": _id("call"),
            "type": "function",
            "function": {"name": reply.call.tool.name, "arguments": arguments},
        }
    ]


def chat_completion(reply: Reply, model: str, tokens: Tokens) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.call:
        message["tool_calls"] = chat_tool_calls(reply)
    return {
        "id": _id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.call else "stop"}
        ],
        "usage": chat_usage(tokens),
    }


def chat_chunks(reply: Reply, model: str, tokens: Tokens, usage_chunk: bool) -> Iterator[dict[str, Any]]:
    """chat.completion.chunk objects: the role, text deltas, the tool call (name, then its arguments in
    pieces), the finish reason; usage in a last chunk without choices when the client asked for it
    (stream_options.include_usage), else on the finishing chunk."""
    base = {
        "id": _id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(reply.text):
        yield chunk({"content": piece})
    for index, call in enumerate(chat_tool_calls(reply)):
        opened = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        yield chunk({"tool_calls": [{"index": index, **opened}]})
        for piece in _pieces(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    finish = chunk({}, "tool_calls" if reply.call else "stop")
    if usage_chunk:
        yield finish
        yield {**base, "choices": [], "usage": chat_usage(tokens)}
    else:
        yield {**finish, "usage": chat_usage(tokens)}


# --- the server -------------------------------------------------------------------------------------------


class RequestLog:
    """The requests served, newest last, for GET /_requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._numbers = itertools.count(1)

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            entry = {"n": next(self._numbers), "time": round(time.time(), 3), **entry}
            self._entries.append(entry)
            del self._entries[:-REQUESTS_KEPT]
            return entry

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], quiet: bool = False, dump: Path | None = None) -> None:
        super().__init__(address, Handler)
        self.log = RequestLog()
        self.quiet = quiet
        self.dump = dump  # a directory that gets every request body, to see what a CLI really sends
        self.tokens = Tokens(INPUT_TOKENS, OUTPUT_TOKENS)


class Handler(BaseHTTPRequestHandler):
    server: StubServer
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams the clients read as they come
    server_version = "modelstub/1"
    request_body = b""  # of the request being answered (one handler serves a keep-alive connection)

    # -- plumbing --

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _record instead

    def _record(self, **entry: Any) -> None:
        entry = self.server.log.add(
            {
                "method": self.command,
                "path": self.path,
                "auth": self._auth(),
                "key": self._key_digest(),
                **entry,
            }
        )
        if self.server.dump is not None and self.request_body:
            (self.server.dump / f"{entry['n']:05d}.json").write_bytes(self.request_body)
        if not self.server.quiet:
            detail = " ".join(
                f"{k}={v}" for k, v in entry.items() if k not in ("n", "time", "method", "path", "tools")
            )
            print(f"[modelstub] {self.command} {self.path} {detail}".rstrip(), file=sys.stderr, flush=True)

    def _auth(self) -> str | None:
        """How the client sent its key (never the key): tests check that the key reached the model."""
        if self.headers.get("x-api-key"):
            return "x-api-key"
        if (self.headers.get("Authorization") or "").lower().startswith("bearer "):
            return "bearer"
        return None

    def _key_digest(self) -> str | None:
        """A digest of the key the client sent (never the key): tests check which key arrived."""
        authorization = self.headers.get("Authorization") or ""
        key = (
            self.headers.get("x-api-key")
            or self.headers.get("x-goog-api-key")
            or (authorization[7:] if authorization.lower().startswith("bearer ") else "")
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16] if key else None

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", _id("req"))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _open_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", _id("req"))
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse(self, events: Iterator[tuple[str | None, Any]]) -> None:
        """Server-sent events, one chunk each; an event name of None sends a data-only event."""
        self._open_stream()
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            self._chunk(frame.encode())
        self._chunk(b"")

    # -- verbs --

    def do_GET(self) -> None:
        self.request_body = b""
        path = urlsplit(self.path).path
        if path == "/_requests":
            self._json(self.server.log.entries())
            return
        where = route(self.path)
        if where.endpoint == "/models" or where.endpoint.startswith("/models?"):
            self._record(scenario=where.scenario, api="models")
            self._json(model_list())
            return
        self._record(scenario=where.scenario, api="other")
        self._json({"ok": True})

    do_HEAD = do_GET

    def do_DELETE(self) -> None:
        self.request_body = b""
        if urlsplit(self.path).path == "/_requests":
            self.server.log.clear()
            self._json([])
            return
        self._record(api="other")
        self._json({"ok": True})

    def do_POST(self) -> None:
        raw = self.request_body = self._body()
        where = route(self.path)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._record(scenario=where.scenario, api="other", error="the body is not a JSON object")
            self._json({"ok": True})
            return
        handlers = {
            "/messages": self._anthropic,
            "/responses": self._responses,
            "/chat/completions": self._chat,
            "/messages/count_tokens": self._count_tokens,
        }
        handler = handlers.get(where.endpoint)
        if handler is None:
            self._record(scenario=where.scenario, api="other")
            self._json({"ok": True})
            return
        # A client that went away (cancelled, or stopped) needs nothing more said to it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler(where, body)

    do_PUT = do_PATCH = do_POST

    # -- the APIs --

    def _tokens(self, where: Route) -> Tokens:
        def number(key: str, default: int) -> int:
            try:
                return int(where.params.get(key, default))
            except ValueError:
                return default

        return Tokens(
            number("input_tokens", self.server.tokens.input),
            number("output_tokens", self.server.tokens.output),
        )

    def _reply(self, where: Route, api: str, body: dict, tools: list[Tool], turn: int) -> Reply | None:
        """What the model answers; None when the scenario is ``fail``, whose error is sent already."""
        if where.scenario == FAIL_SCENARIO:
            status = int(where.params.get("status", "400"))
            self._record(scenario=where.scenario, api=api, turn=turn, model=body.get("model"), reply=status)
            self._json(api_error(api, status), status=status)
            return None
        reply = plan_reply(where.scenario, where.params, turn, tools, body)
        self._record(
            scenario=where.scenario,
            api=api,
            turn=turn if tools else None,
            model=body.get("model"),
            stream=bool(body.get("stream")),
            reply=reply.summary if tools else "side request",
            tools=[tool.name for tool in tools],
        )
        return reply

    def _anthropic(self, where: Route, body: dict) -> None:
        reply = self._reply(where, "anthropic", body, anthropic_tools(body), anthropic_turn(body))
        if reply is None:
            return
        model, tokens = str(body.get("model") or "claude-stub"), self._tokens(where)
        if body.get("stream"):
            self._sse(anthropic_events(reply, model, tokens))
        else:
            self._json(anthropic_message(reply, model, tokens))

    def _count_tokens(self, where: Route, body: dict) -> None:
        self._record(scenario=where.scenario, api="count_tokens")
        self._json({"input_tokens": self._tokens(where).input})

    def _responses(self, where: Route, body: dict) -> None:
        reply = self._reply(where, "responses", body, responses_tools(body), responses_turn(body))
        if reply is None:
            return
        model, tokens = str(body.get("model") or "gpt-stub"), self._tokens(where)
        if body.get("stream"):
            self._sse(responses_events(reply, model, tokens))
        else:
            response = responses_object(
                "completed", model, responses_items(reply), responses_usage(tokens), _id("resp")
            )
            self._json(response)

    def _chat(self, where: Route, body: dict) -> None:
        reply = self._reply(where, "chat", body, chat_tools(body), chat_turn(body))
        if reply is None:
            return
        model, tokens = str(body.get("model") or "gpt-stub"), self._tokens(where)
        if body.get("stream"):
            usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = chat_chunks(reply, model, tokens, usage_chunk)
            self._sse(itertools.chain(((None, chunk) for chunk in chunks), [(None, "[DONE]")]))
        else:
            self._json(chat_completion(reply, model, tokens))


def api_error(api: str, status: int) -> dict[str, Any]:
    """An error body in the provider's shape."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "api_error"
    )
    message = f"the model stub fails this request with HTTP {status}"
    if api == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def model_list() -> dict[str, Any]:
    """One answer that reads as a model list to the Anthropic and the OpenAI clients alike."""
    models = [
        {"id": "stub-model", "object": "model", "type": "model", "created": 0, "owned_by": "modelstub"},
    ]
    return {
        "object": "list",
        "data": models,
        "has_more": False,
        "first_id": None,
        "last_id": None,
        "models": [],
    }


def serve(host: str = "127.0.0.1", port: int = 0, quiet: bool = False) -> StubServer:
    """A running server (in a daemon thread); ``server.server_address`` has its port."""
    server = StubServer((host, port), quiet=quiet)
    threading.Thread(target=server.serve_forever, name="modelstub", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    parser.add_argument("--dump", type=Path, metavar="DIR", help="write each request body to DIR/<n>.json")
    options = parser.parse_args(argv)
    if options.dump:
        options.dump.mkdir(parents=True, exist_ok=True)
    server = StubServer((options.host, options.port), quiet=options.quiet, dump=options.dump)
    print(f"[modelstub] listening on {options.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
