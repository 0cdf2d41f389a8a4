"""The model stub the e2e tier points the real agent CLIs at: its wire formats (Anthropic Messages SSE,
OpenAI Responses SSE, Chat Completions chunks), its scripted turns and its request log, over HTTP on a
loopback port."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import modelstub

pytestmark = pytest.mark.unit

WRITE_TOOL = {
    "name": "Write",
    "input_schema": {"type": "object", "properties": {"file_path": {}, "content": {}}},
}
BASH_TOOL = {"name": "Bash", "input_schema": {"properties": {"command": {}, "description": {}}}}
CLAUDE_TOOLS = [WRITE_TOOL, BASH_TOOL]
CLAUDE_SYSTEM = "You are an agent.\n<env>\nWorking directory: /work/repo\n</env>"
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"properties": {"cmd": {}, "workdir": {}}}},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
]


@pytest.fixture(scope="module")
def server() -> Iterator[modelstub.StubServer]:
    server = modelstub.serve(quiet=True)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub(server: modelstub.StubServer) -> Stub:
    server.log.clear()
    return Stub(server.server_address[1])


class Stub:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(
                method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def post(self, path: str, body: Any, **headers: str) -> tuple[int, bytes]:
        status, _, data = self.request("POST", path, body, headers)
        return status, data

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.request(method, path, body)
        assert status == 200
        return json.loads(data)

    def sse(self, path: str, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
        status, headers, data = self.request("POST", path, {**body, "stream": True})
        assert status == 200 and headers["Content-Type"] == "text/event-stream"
        return parse_sse(data.decode())

    def requests(self) -> list[dict[str, Any]]:
        return self.json("GET", "/_requests")


def parse_sse(text: str) -> list[tuple[str | None, Any]]:
    """(event name or None, decoded data) per event; data that is not JSON (``[DONE]``) as text."""
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        name, data = None, []
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        payload = "\n".join(data)
        events.append((name, payload if payload == "[DONE]" else json.loads(payload)))
    return events


def claude_turn(tool_results: int) -> dict[str, Any]:
    """A Messages request after ``tool_results`` tool calls, as Claude Code sends it."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "write hello.txt"}]
    for n in range(tool_results):
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "Bash"}]}
        )
        result = {"type": "tool_result", "tool_use_id": f"t{n}", "content": "ok"}
        messages.append({"role": "user", "content": [result]})
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "system": CLAUDE_SYSTEM,
        "tools": CLAUDE_TOOLS,
        "messages": messages,
    }


def anthropic_blocks(events: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
    """The content blocks a client assembles from the stream's deltas."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        assert name == data["type"]  # the event line names the data's type
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
    for index, text in partial.items():
        blocks[index]["input"] = json.loads(text)
    return [blocks[index] for index in sorted(blocks)]


# --- Anthropic Messages ------------------------------------------------------------------------------


def test_a_streamed_message_has_the_documented_event_sequence(stub) -> None:
    events = stub.sse("/s/edit/v1/messages", claude_turn(0))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["model"] == "claude-test" and start["content"] == []
    assert start["usage"]["input_tokens"] == modelstub.INPUT_TOKENS
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == modelstub.OUTPUT_TOKENS


def test_the_edit_scenario_writes_runs_and_answers(stub) -> None:
    first = anthropic_blocks(stub.sse("/s/edit/v1/messages", claude_turn(0)))
    assert first[0] == {"type": "text", "text": "I will write hello.txt."}
    assert first[1]["name"] == "Write"
    # An absolute path in the CLI's working directory: Claude Code's Write tool asks for one.
    assert first[1]["input"] == {
        "file_path": "/work/repo/hello.txt",
        "content": "hello from the model stub\n",
    }

    second = anthropic_blocks(stub.sse("/s/edit/v1/messages", claude_turn(1)))
    assert second[1]["name"] == "Bash"
    assert second[1]["input"]["command"] == "cat hello.txt && echo ran-by-agent > ran.txt"
    assert second[1]["input"]["description"]

    third = stub.sse("/s/edit/v1/messages", claude_turn(2))
    assert anthropic_blocks(third) == [{"type": "text", "text": "Done: wrote hello.txt and ran the command."}]
    assert third[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_scenario_parameters_come_from_the_path(stub) -> None:
    path = "/s/edit/file=notes.txt/content=hi%20there/command=ls%20%2Ftmp/v1/messages"
    first = anthropic_blocks(stub.sse(path, claude_turn(0)))
    assert first[1]["input"] == {"file_path": "/work/repo/notes.txt", "content": "hi there"}
    second = anthropic_blocks(stub.sse(path, claude_turn(1)))
    assert second[1]["input"]["command"] == "ls /tmp"


def test_without_streaming_a_message_is_one_json_object(stub) -> None:
    status, data = stub.post("/s/edit/v1/messages", claude_turn(1))
    message = json.loads(data)
    assert status == 200 and message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["input"]["command"].startswith("cat hello.txt")
    assert message["usage"]["input_tokens"] == modelstub.INPUT_TOKENS


def test_the_endless_scenario_never_ends_and_slow_keeps_the_agent_busy(stub) -> None:
    for turn in (1, 2, 7):
        blocks = anthropic_blocks(stub.sse("/s/endless/v1/messages", claude_turn(turn - 1)))
        assert blocks[-1]["input"]["command"] == f"echo turn {turn}"
    for turn in (1, 5):
        blocks = anthropic_blocks(stub.sse("/s/slow/seconds=30/v1/messages", claude_turn(turn - 1)))
        assert blocks[-1]["input"]["command"] == "echo started; sleep 30"


def test_a_request_without_tools_is_a_side_request_answered_with_text(stub) -> None:
    body = {**claude_turn(0), "tools": []}
    assert anthropic_blocks(stub.sse("/s/edit/v1/messages", body)) == [{"type": "text", "text": "OK"}]
    assert stub.requests()[-1]["reply"] == "side request"


def test_without_a_scenario_the_model_just_answers(stub) -> None:
    assert anthropic_blocks(stub.sse("/v1/messages", claude_turn(0))) == [{"type": "text", "text": "Done."}]


def test_the_fail_scenario_answers_with_an_error_in_the_providers_shape(stub) -> None:
    status, data = stub.post("/s/fail/v1/messages", claude_turn(0))
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"
    status, data = stub.post("/s/fail/status=500/v1/responses", {"input": "hi", "stream": True})
    assert status == 500 and json.loads(data)["error"]["type"] == "api_error"


# --- OpenAI Responses -----------------------------------------------------------------------------------


def codex_turn(outputs: int, tools: list[dict[str, Any]] = CODEX_TOOLS) -> dict[str, Any]:
    """A Responses request after ``outputs`` tool calls, as Codex sends it."""
    context = "<environment_context>\n  <cwd>/work/repo</cwd>\n</environment_context>"
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": context}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write hello.txt"}]},
    ]
    for n in range(outputs):
        items.append({"type": "function_call", "call_id": f"c{n}", "name": "exec_command", "arguments": "{}"})
        items.append({"type": "function_call_output", "call_id": f"c{n}", "output": "ok"})
    return {"model": "gpt-test", "input": items, "tools": tools, "parallel_tool_calls": False}


def responses_output(events: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.completed"
    for name, data in events:
        assert name == data["type"]
    added = [data["item"]["id"] for name, data in events if name == "response.output_item.added"]
    done = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert added == [item["id"] for item in done]
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed" and completed["output"] == done
    usage = completed["usage"]
    assert (
        usage["input_tokens"] == modelstub.INPUT_TOKENS and usage["output_tokens"] == modelstub.OUTPUT_TOKENS
    )
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return done


def test_codex_writes_with_a_freeform_apply_patch_and_runs_exec_command(stub) -> None:
    events = stub.sse("/s/edit/v1/responses", codex_turn(0))
    message, patch = responses_output(events)
    assert message["type"] == "message" and message["content"][0]["text"] == "I will write hello.txt."
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert deltas == "I will write hello.txt."
    assert patch["type"] == "custom_tool_call" and patch["name"] == "apply_patch"
    assert patch["input"] == (
        "*** Begin Patch\n*** Add File: hello.txt\n+hello from the model stub\n*** End Patch\n"
    )

    events = stub.sse("/s/edit/v1/responses", codex_turn(1))
    _, command = responses_output(events)
    assert command["type"] == "function_call" and command["name"] == "exec_command"
    streamed = "".join(
        data["delta"] for name, data in events if name == "response.function_call_arguments.delta"
    )
    assert (
        json.loads(streamed)
        == json.loads(command["arguments"])
        == {"cmd": "cat hello.txt && echo ran-by-agent > ran.txt"}
    )

    (answer,) = responses_output(stub.sse("/s/edit/v1/responses", codex_turn(2)))
    assert answer["content"][0]["text"] == "Done: wrote hello.txt and ran the command."


def test_codex_code_mode_gets_a_script_for_its_exec_tool(stub) -> None:
    """Newer Codex models see one freeform tool, `exec`, that runs JavaScript calling the real tools; the
    tools come in an additional_tools item of the input, grouped in namespaces."""
    exec_tool = {
        "type": "custom",
        "name": "exec",
        "description": "Run JavaScript: `await tools.exec_command(...)`",
    }
    additional = {
        "type": "additional_tools",
        "tools": [{"type": "namespace", "name": "functions", "tools": [exec_tool]}],
    }
    body = codex_turn(0, tools=[])
    body["input"].insert(0, additional)
    _, script = responses_output(stub.sse("/s/edit/v1/responses", body))
    assert script["type"] == "custom_tool_call" and script["name"] == "exec"
    assert script["input"].startswith(
        'text(await tools.apply_patch("*** Begin Patch\\n*** Add File: hello.txt'
    )

    body["input"] += [{"type": "custom_tool_call_output", "call_id": "c0", "output": "ok"}]
    _, script = responses_output(stub.sse("/s/edit/v1/responses", body))
    assert 'tools.exec_command({cmd: "cat hello.txt && echo ran-by-agent > ran.txt"})' in script["input"]


def test_a_function_tool_that_writes_files_is_used_with_its_own_argument_names(stub) -> None:
    write = {
        "type": "function",
        "name": "write",
        "parameters": {"properties": {"filePath": {}, "content": {}}},
    }
    _, call = responses_output(stub.sse("/s/edit/v1/responses", codex_turn(0, tools=[write])))
    assert json.loads(call["arguments"]) == {
        "filePath": "/work/repo/hello.txt",
        "content": "hello from the model stub\n",
    }


def test_without_streaming_a_response_is_one_json_object(stub) -> None:
    status, data = stub.post("/s/edit/v1/responses", codex_turn(1))
    response = json.loads(data)
    assert status == 200 and response["object"] == "response" and response["status"] == "completed"
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]


# --- OpenAI Chat Completions ----------------------------------------------------------------------------


def chat_turn(tool_results: int) -> dict[str, Any]:
    bash = {"type": "function", "function": {"name": "bash", "parameters": {"properties": {"command": {}}}}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    messages += [{"role": "tool", "tool_call_id": f"c{n}", "content": "ok"} for n in range(tool_results)]
    return {"model": "gpt-test", "messages": messages, "tools": [bash]}


def test_chat_completions_stream_a_tool_call_in_chunks_then_done(stub) -> None:
    body = {**chat_turn(2), "stream_options": {"include_usage": True}}
    events = stub.sse("/s/endless/v1/chat/completions", body)
    assert all(name is None for name, _ in events) and events[-1][1] == "[DONE]"
    chunks = [data for _, data in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == "Turn 3: one more command."
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["function"]["name"] == "bash" and calls[0]["id"]
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"command": "echo turn 3"}
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == modelstub.INPUT_TOKENS


def test_chat_completions_without_streaming(stub) -> None:
    status, data = stub.post("/s/answer/answer=hello/v1/chat/completions", chat_turn(0))
    completion = json.loads(data)
    assert status == 200 and completion["choices"][0]["message"]["content"] == "hello"
    assert completion["choices"][0]["finish_reason"] == "stop"


# --- everything else --------------------------------------------------------------------------------------


def test_requests_are_recorded_with_their_turn_and_how_the_key_came(stub) -> None:
    stub.post("/s/edit/v1/messages?beta=true", claude_turn(1), **{"x-api-key": "secret"})
    stub.post("/s/edit/v1/responses", codex_turn(0), Authorization="Bearer secret")
    first, second = stub.requests()
    assert first["scenario"] == "edit" and first["api"] == "anthropic" and first["turn"] == 2
    assert (
        first["reply"] == "tool Bash" and first["auth"] == "x-api-key" and first["tools"] == ["Write", "Bash"]
    )
    assert second["api"] == "responses" and second["turn"] == 1 and second["auth"] == "bearer"
    assert "secret" not in json.dumps(stub.requests())
    assert stub.json("DELETE", "/_requests") == [] and stub.requests() == []


def test_startup_requests_get_harmless_answers(stub) -> None:
    assert stub.json("GET", "/s/edit/v1/models")["data"][0]["id"]
    assert stub.json("POST", "/s/edit/v1/messages/count_tokens", claude_turn(0)) == {"input_tokens": 100}
    assert stub.json("POST", "/api/event_logging/batch", {"events": []}) == {"ok": True}
    status, _, _ = stub.request("HEAD", "/s/edit/api/hello")
    assert status == 200
    assert [entry["api"] for entry in stub.requests()] == ["models", "count_tokens", "other", "other"]


def test_parallel_clients_each_get_their_own_conversation(stub) -> None:
    results: dict[int, str] = {}

    def converse(turn: int) -> None:
        blocks = anthropic_blocks(stub.sse("/s/endless/v1/messages", claude_turn(turn - 1)))
        results[turn] = blocks[-1]["input"]["command"]

    threads = [threading.Thread(target=converse, args=(turn,)) for turn in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {turn: f"echo turn {turn}" for turn in range(1, 9)}


@pytest.mark.parametrize(
    ("path", "scenario", "params", "endpoint"),
    [
        ("/s/edit/v1/messages?beta=true", "edit", {}, "/messages"),
        ("/s/edit/file=a%2Fb.txt/v1/responses", "edit", {"file": "a/b.txt"}, "/responses"),
        ("/s/answer/chat/completions", "answer", {}, "/chat/completions"),
        ("/v1/messages", "answer", {}, "/messages"),
    ],
)
def test_routes(path: str, scenario: str, params: dict[str, str], endpoint: str) -> None:
    assert modelstub.route(path) == modelstub.Route(scenario, params, endpoint)
