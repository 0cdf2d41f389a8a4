# ruff: noqa: E501  (the captured streams are kept exactly as the CLIs wrote them, one event per line)
"""The Gemini CLI and OpenCode adapters of taskyard-agent, on event streams captured from the real CLIs
(Gemini CLI 0.61.0 and OpenCode 1.18.33) run against a scripted model server; the streams are
embedded below exactly as the CLIs wrote them."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

_ENTRYPOINT = Path(__file__).resolve().parents[2] / "agents" / "entrypoint" / "taskyard_agent.py"
_spec = importlib.util.spec_from_file_location("taskyard_agent_for_adapters", _ENTRYPOINT)
taskyard_agent = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = taskyard_agent  # dataclasses look their module up
_spec.loader.exec_module(taskyard_agent)
Final, Limits, Run, Text = (
    taskyard_agent.Final,
    taskyard_agent.Limits,
    taskyard_agent.Run,
    taskyard_agent.Text,
)
ToolCall, ToolOutput, Usage = taskyard_agent.ToolCall, taskyard_agent.ToolOutput, taskyard_agent.Usage
GeminiCli, OpenCode, Note = taskyard_agent.GeminiCli, taskyard_agent.OpenCode, taskyard_agent.Note
_gemini_error = taskyard_agent._gemini_error

# captures/gemini-ok.jsonl
GEMINI_OK = r"""
{"type":"init","timestamp":"2026-12-02T23:38:25.220Z","session_id":"4c740e0f-58e4-4c36-a23c-7900eb60ca0f","model":"gemini-2.5-flash"}
{"type":"message","timestamp":"2026-12-02T23:38:25.223Z","role":"user","content":"Write hello.txt, then cat it.\n"}
{"type":"message","timestamp":"2026-12-02T23:38:25.374Z","role":"assistant","content":"I'll write the file ","delta":true}
{"type":"message","timestamp":"2026-12-02T23:38:25.404Z","role":"assistant","content":"first.","delta":true}
{"type":"tool_use","timestamp":"2026-12-02T23:38:25.556Z","tool_name":"write_file","tool_id":"write_file__write_file_1796254705425_0","parameters":{"file_path":"hello.txt","content":"hello from the stub\n"}}
{"type":"tool_result","timestamp":"2026-12-02T23:38:25.683Z","tool_id":"write_file__write_file_1796254705425_0","status":"success"}
{"type":"tool_use","timestamp":"2026-12-02T23:38:25.696Z","tool_name":"run_shell_command","tool_id":"run_shell_command__run_shell_command_1796254705694_0","parameters":{"command":"cat hello.txt && echo done-from-shell","description":"Show the file"}}
{"type":"tool_result","timestamp":"2026-12-02T23:38:25.860Z","tool_id":"run_shell_command__run_shell_command_1796254705694_0","status":"success","output":"hello from the stub\ndone-from-shell"}
{"type":"message","timestamp":"2026-12-02T23:38:25.908Z","role":"assistant","content":"All done: I wrote hello.","delta":true}
{"type":"message","timestamp":"2026-12-02T23:38:25.957Z","role":"assistant","content":"txt and ran `cat` on it.","delta":true}
{"type":"result","timestamp":"2026-12-02T23:38:26.005Z","status":"success","stats":{"total_tokens":3363,"input_tokens":3300,"output_tokens":63,"cached":0,"input":3300,"duration_ms":786,"tool_calls":2,"models":{"stub-model":{"total_tokens":3363,"input_tokens":3300,"output_tokens":63,"cached":0,"input":3300}}}}
"""

# captures/gemini-toolerr.jsonl
GEMINI_TOOLERR = r"""
{"type":"init","timestamp":"2026-12-03T00:15:06.241Z","session_id":"bf1c7f3b-a60c-4de3-abe3-fb3e7185d9b4","model":"gemini-2.5-flash"}
{"type":"message","timestamp":"2026-12-03T00:15:06.244Z","role":"user","content":"Write hello.txt, then cat it.\n"}
{"type":"message","timestamp":"2026-12-03T00:15:06.317Z","role":"assistant","content":"I'll write the file ","delta":true}
{"type":"message","timestamp":"2026-12-03T00:15:06.339Z","role":"assistant","content":"first.","delta":true}
{"type":"tool_use","timestamp":"2026-12-03T00:15:06.481Z","tool_name":"write_file","tool_id":"write_file__write_file_1796256906401_0","parameters":{"file_path":"/proc/nonexistent/hello.txt","content":"hello from the stub\n"}}
{"type":"tool_result","timestamp":"2026-12-03T00:15:06.522Z","tool_id":"write_file__write_file_1796256906401_0","status":"error","output":"Path not in workspace: Attempted path \"/proc/nonexistent/hello.txt\" resolves outside the allowed workspace directories: /workspace or the project temp directory: /tmp/home/.gemini/tmp/ws-g","error":{"type":"invalid_tool_params","message":"Path not in workspace: Attempted path \"/proc/nonexistent/hello.txt\" resolves outside the allowed workspace directories: /workspace or the project temp directory: /tmp/home/.gemini/tmp/ws-g"}}
{"type":"tool_use","timestamp":"2026-12-03T00:15:06.551Z","tool_name":"run_shell_command","tool_id":"run_shell_command__run_shell_command_1796256906548_0","parameters":{"command":"echo to-stderr >&2; exit 3","description":"Show the file"}}
{"type":"tool_result","timestamp":"2026-12-03T00:15:06.920Z","tool_id":"run_shell_command__run_shell_command_1796256906548_0","status":"success","output":"to-stderr"}
{"type":"message","timestamp":"2026-12-03T00:15:06.964Z","role":"assistant","content":"All done: I wrote hello.","delta":true}
{"type":"message","timestamp":"2026-12-03T00:15:07.010Z","role":"assistant","content":"txt and ran `cat` on it.","delta":true}
{"type":"result","timestamp":"2026-12-03T00:15:07.060Z","status":"success","stats":{"total_tokens":3363,"input_tokens":3300,"output_tokens":63,"cached":0,"input":3300,"duration_ms":819,"tool_calls":2,"models":{"stub-model":{"total_tokens":3363,"input_tokens":3300,"output_tokens":63,"cached":0,"input":3300}}}}
"""

# captures/gemini-error400.jsonl
GEMINI_ERROR400 = r"""
{"type":"init","timestamp":"2026-12-02T23:47:56.054Z","session_id":"1798bd59-8ebd-41a4-92d5-eaba4f8688fb","model":"gemini-2.5-flash"}
{"type":"message","timestamp":"2026-12-02T23:47:56.055Z","role":"user","content":"Write hello.txt, then cat it.\n"}
{"type":"result","timestamp":"2026-12-02T23:47:56.217Z","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":400,\"message\":\"stub says error400\",\"status\":\"INVALID_ARGUMENT\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0,"duration_ms":0,"tool_calls":0,"models":{"gemini-2.5-flash":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0}}}}
"""

# captures/gemini-empty-response.jsonl
GEMINI_EMPTY_RESPONSE = r"""
{"type":"init","timestamp":"2026-12-03T00:20:43.704Z","session_id":"0fc3406f-6f3a-4c58-bf05-babe3be2b76b","model":"gemini-2.5-flash"}
{"type":"message","timestamp":"2026-12-03T00:20:43.706Z","role":"user","content":"Write hello.txt, then cat it.\n"}
{"type":"error","timestamp":"2026-12-03T00:20:51.052Z","severity":"error","message":"The model returned an empty response with no text or thoughts. This may be a transient API issue; please try again."}
{"type":"result","timestamp":"2026-12-03T00:20:51.053Z","status":"error","stats":{"total_tokens":4080,"input_tokens":4000,"output_tokens":80,"cached":0,"input":4000,"duration_ms":7349,"tool_calls":0,"models":{"stub-model":{"total_tokens":4080,"input_tokens":4000,"output_tokens":80,"cached":0,"input":4000},"gemini-2.5-flash":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0,"input":0}}}}
"""

# captures/gemini-sigterm-group.jsonl
GEMINI_SIGTERM_GROUP = r"""
{"type":"init","timestamp":"2026-12-02T23:52:32.664Z","session_id":"30fb6215-d9fb-4514-ae39-489881f90c89","model":"gemini-2.5-flash"}
{"type":"message","timestamp":"2026-12-02T23:52:32.666Z","role":"user","content":"Write hello.txt, then cat it.\n"}
{"type":"message","timestamp":"2026-12-02T23:52:32.702Z","role":"assistant","content":"I'll write the file ","delta":true}
"""

# captures/opencode-ok.jsonl
OPENCODE_OK = r"""
{"type":"step_start","timestamp":1796254781496,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920cfec0012TSV4ZzGeKgYpN","messageID":"msg_23920bfea001t98xVxYd6fPSWB","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","snapshot":"4b825dc642cb6eb9a060e54bf8d69288fbee4904","type":"step-start"}}
{"type":"text","timestamp":1796254781496,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920cff5001haPwoO1G7IWjZN","messageID":"msg_23920bfea001t98xVxYd6fPSWB","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","type":"text","text":"I'll write the file first.","time":{"start":1796254781429,"end":1796254781481}}}
{"type":"tool_use","timestamp":1796254781628,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"type":"tool","tool":"write","callID":"call_0","state":{"status":"completed","input":{"filePath":"hello.txt","content":"hello from the stub\n"},"output":"Wrote file successfully.","metadata":{"diagnostics":{},"filepath":"/workspace/hello.txt","exists":false,"truncated":false},"title":"hello.txt","time":{"start":1796254781464,"end":1796254781616}},"id":"prt_23920cffe001Ka9xNLW4X0HtHN","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","messageID":"msg_23920bfea001t98xVxYd6fPSWB"}}
{"type":"step_finish","timestamp":1796254782531,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920d3f1001mWsoRJEIjxYim5","reason":"tool-calls","snapshot":"8d86f9e18538ba9faddd514db46b8be9a95aabbb","messageID":"msg_23920bfea001t98xVxYd6fPSWB","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","type":"step-finish","tokens":{"total":1020,"input":1000,"output":20,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","timestamp":1796254783491,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920d7bd001kjvZLBj35bBmi6","messageID":"msg_23920d58e001i4jGYEewTV8ZNm","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","snapshot":"8d86f9e18538ba9faddd514db46b8be9a95aabbb","type":"step-start"}}
{"type":"tool_use","timestamp":1796254783768,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"type":"tool","tool":"bash","callID":"call_1","state":{"status":"completed","input":{"command":"cat hello.txt && echo done-from-shell"},"output":"hello from the stub\ndone-from-shell\n","metadata":{"output":"hello from the stub\ndone-from-shell\n","exit":0,"truncated":false},"title":"cat hello.txt && echo done-from-shell","time":{"start":1796254783466,"end":1796254783762}},"id":"prt_23920d7c5001ZXpWOiF54e2BPM","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","messageID":"msg_23920d58e001i4jGYEewTV8ZNm"}}
{"type":"step_finish","timestamp":1796254784498,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920db60001C2UTAYraqbQ2V3","reason":"tool-calls","snapshot":"8d86f9e18538ba9faddd514db46b8be9a95aabbb","messageID":"msg_23920d58e001i4jGYEewTV8ZNm","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","type":"step-finish","tokens":{"total":1121,"input":1100,"output":21,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","timestamp":1796254786282,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920e29f0011dTahhxcpHqAnr","messageID":"msg_23920dd99001tuMcwxBdx72OrF","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","snapshot":"8d86f9e18538ba9faddd514db46b8be9a95aabbb","type":"step-start"}}
{"type":"text","timestamp":1796254786285,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920e2be001NuHwNK4MjuTNt1","messageID":"msg_23920dd99001tuMcwxBdx72OrF","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","type":"text","text":"All done: I wrote hello.txt and ran `cat` on it.","time":{"start":1796254786238,"end":1796254786260}}}
{"type":"step_finish","timestamp":1796254787634,"sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","part":{"id":"prt_23920e7e9001VK95O5vg2SfrEX","reason":"stop","snapshot":"8d86f9e18538ba9faddd514db46b8be9a95aabbb","messageID":"msg_23920dd99001tuMcwxBdx72OrF","sessionID":"ses_dc6df46f0ffeBRpDpY7pFmvz3W","type":"step-finish","tokens":{"total":1222,"input":1200,"output":22,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
"""

# captures/opencode-toolerr.jsonl
OPENCODE_TOOLERR = r"""
{"type":"step_start","timestamp":1796256914545,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_239415bde001VMkIvVWF4NBxuA","messageID":"msg_2394159e4001VhkomTjdw6qIZR","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-start"}}
{"type":"text","timestamp":1796256914546,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_239415bed001MKzMyVKzwKep7o","messageID":"msg_2394159e4001VhkomTjdw6qIZR","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"text","text":"I'll write the file first.","time":{"start":1796256914413,"end":1796256914454}}}
{"type":"tool_use","timestamp":1796256914546,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"type":"tool","tool":"write","callID":"call_0","state":{"status":"error","input":{"filePath":"/proc/nonexistent/hello.txt","content":"hello from the stub\n"},"error":"NotFound: FileSystem.makeDirectory (/proc/nonexistent)","time":{"start":1796256914450,"end":1796256914471}},"id":"prt_239415bf60011d9xul0WLm9hR8","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","messageID":"msg_2394159e4001VhkomTjdw6qIZR"}}
{"type":"step_finish","timestamp":1796256914546,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_239415c35001gchydUXeGYDr6j","reason":"tool-calls","messageID":"msg_2394159e4001VhkomTjdw6qIZR","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-finish","tokens":{"total":1020,"input":1000,"output":20,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","timestamp":1796256916902,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_23941655c001D9mWPTkqWPN29C","messageID":"msg_239415c66001vMStuVSPfT02V5","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-start"}}
{"type":"tool_use","timestamp":1796256917350,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"type":"tool","tool":"bash","callID":"call_1","state":{"status":"completed","input":{"command":"echo to-stderr >&2; exit 3"},"output":"to-stderr\n","metadata":{"output":"to-stderr\n","exit":3,"truncated":false},"title":"echo to-stderr >&2; exit 3","time":{"start":1796256916848,"end":1796256917238}},"id":"prt_239416561001YBkuenP828COLw","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","messageID":"msg_239415c66001vMStuVSPfT02V5"}}
{"type":"step_finish","timestamp":1796256917351,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_239416700001J0q5QyfapycdIJ","reason":"tool-calls","messageID":"msg_239415c66001vMStuVSPfT02V5","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-finish","tokens":{"total":1121,"input":1100,"output":21,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","timestamp":1796256917535,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_2394167da001cJ55w5DElk7jtc","messageID":"msg_239416728001tk1plzyUYBNG1O","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-start"}}
{"type":"text","timestamp":1796256917536,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_2394167e8001M1Xkq2r6FivqGB","messageID":"msg_239416728001tk1plzyUYBNG1O","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"text","text":"All done: I wrote hello.txt and ran `cat` on it.","time":{"start":1796256917480,"end":1796256917493}}}
{"type":"step_finish","timestamp":1796256917536,"sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","part":{"id":"prt_2394167fb001qLHJbt5GgtwYmt","reason":"stop","messageID":"msg_239416728001tk1plzyUYBNG1O","sessionID":"ses_dc6beb0e5ffeP4Io6TLQyaemqC","type":"step-finish","tokens":{"total":1222,"input":1200,"output":22,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
"""

# captures/opencode-error400.jsonl
OPENCODE_ERROR400 = r"""
{"type":"error","timestamp":1796255612763,"sessionID":"ses_dc6d296c6ffeSaFajM2xXGWqqe","error":{"name":"APIError","data":{"message":"stub says error400","statusCode":400,"isRetryable":false,"responseHeaders":{"content-length":"97","content-type":"application/json","date":"Wed, 02 Dec 2026 23:53:32 GMT","server":"BaseHTTP/0.6 Python/3.11.7"},"responseBody":"{\"error\": {\"message\": \"stub says error400\", \"type\": \"invalid_request_error\", \"code\": \"error400\"}}","metadata":{"url":"http://127.0.0.1:8765/error400/v1/chat/completions"}}}}
"""

# captures/opencode-refused.jsonl
OPENCODE_REFUSED = r"""
{"type":"error","timestamp":1796257023263,"sessionID":"ses_dc6be0131ffekKhJJbOfi7bpmT","error":{"name":"APIError","data":{"message":"Cannot connect to API: Unable to connect. Is the computer able to access the url?","isRetryable":true,"metadata":{"url":"http://127.0.0.1:9/ok/v1/chat/completions"}}}}
"""

# captures/opencode-noperm-toolerr.jsonl
OPENCODE_NOPERM_TOOLERR = r"""
{"type":"step_start","timestamp":1796256935692,"sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","part":{"id":"prt_23941aedc001aEt83JWEyeMWO5","messageID":"msg_23941ad55001XJ7gjuOKV8EcGX","sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","type":"step-start"}}
{"type":"text","timestamp":1796256935707,"sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","part":{"id":"prt_23941aee4001IbIVgW4Lv4bsWG","messageID":"msg_23941ad55001XJ7gjuOKV8EcGX","sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","type":"text","text":"I'll write the file first.","time":{"start":1796256935652,"end":1796256935686}}}
{"type":"tool_use","timestamp":1796256936367,"sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","part":{"type":"tool","tool":"write","callID":"call_0","state":{"status":"error","input":{"filePath":"/proc/nonexistent/hello.txt","content":"hello from the stub\n"},"error":"The user rejected permission to use this specific tool call.","time":{"start":1796256935682,"end":1796256935709}},"id":"prt_23941aeee001Q1y368jNbWKxeT","sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","messageID":"msg_23941ad55001XJ7gjuOKV8EcGX"}}
{"type":"step_finish","timestamp":1796256936367,"sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","part":{"id":"prt_23941af22001AqhX5dyP5h34f7","reason":"tool-calls","messageID":"msg_23941ad55001XJ7gjuOKV8EcGX","sessionID":"ses_dc6be5e0cffeAxSHTwf0MP2kJn","type":"step-finish","tokens":{"total":1020,"input":1000,"output":20,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
"""

# captures/opencode-sigterm-group.jsonl
OPENCODE_SIGTERM_GROUP = r"""
{"type":"step_start","timestamp":1796255732284,"sessionID":"ses_dc6d0d230ffe1Qcdez56jcHDxG","part":{"id":"prt_2392f51ba001O0H2yafZbk7lIV","messageID":"msg_2392f430a001RSabQEoUrBFxg1","sessionID":"ses_dc6d0d230ffe1Qcdez56jcHDxG","type":"step-start"}}
"""


def events(adapter, stream: str) -> tuple[list, Usage]:
    usage = Usage()
    said: list = []
    for line in stream.strip().splitlines():
        said += adapter.parse(json.loads(line), usage)
    return said, usage


def kinds(said: list) -> list[str]:
    return [type(e).__name__ for e in said]


def follow(adapter, stream: str, limits: Limits | None = None) -> tuple[taskyard_agent.Outcome, str]:
    """The entrypoint's own loop over the stream (no process: a limit only marks the outcome)."""
    out = io.StringIO()
    run = Run(adapter, limits or Limits(), out)
    outcome = run.follow(line.encode() + b"\n" for line in stream.strip().splitlines())
    return outcome, out.getvalue()


# --- Gemini CLI -----------------------------------------------------------------------------------------


def test_gemini_command_reads_the_prompt_from_stdin():
    argv = GeminiCli().command("gemini-2.5-flash", ["--debug"], {})
    assert argv == [
        "gemini",
        "--output-format",
        "stream-json",
        "--yolo",
        "--skip-trust",
        "--model",
        "gemini-2.5-flash",
        "--debug",
    ]
    assert "-p" not in argv and "--prompt" not in argv
    assert GeminiCli().command(None, [], {}) == [
        "gemini",
        "--output-format",
        "stream-json",
        "--yolo",
        "--skip-trust",
    ]


def test_gemini_conversation():
    said, usage = events(GeminiCli(), GEMINI_OK)
    assert kinds(said) == [
        "Note",
        "Text",
        "ToolCall",
        "ToolOutput",
        "ToolCall",
        "ToolOutput",
        "Text",
        "Final",
    ]
    assert said[0] == Note(
        "[gemini-cli] session 4c740e0f-58e4-4c36-a23c-7900eb60ca0f, model gemini-2.5-flash"
    )
    assert said[1] == Text("I'll write the file first.")  # two deltas, one message
    assert said[2] == ToolCall(
        "write_file", '{"content": "hello from the stub\\n", "file_path": "hello.txt"}'
    )
    assert said[3] == ToolOutput("success")  # write_file reports no output
    assert said[4].name == "run_shell_command" and "cat hello.txt" in said[4].detail
    assert said[5] == ToolOutput("hello from the stub done-from-shell")
    assert said[6] == Text("All done: I wrote hello.txt and ran `cat` on it.")
    assert said[7] == Final("All done: I wrote hello.txt and ran `cat` on it.", None)
    assert usage == Usage(input_tokens=3300, output_tokens=63, cost_usd=None, turns=3)


def test_gemini_does_not_show_the_prompt_again():
    adapter, usage = GeminiCli(), Usage()
    prompt = "-" + "x" * 100 * 1024
    line = {"type": "message", "timestamp": "2026-12-02T23:38:25.223Z", "role": "user", "content": prompt}
    assert adapter.parse(line, usage) == []
    assert usage.turns == 0


def test_gemini_tool_errors():
    said, usage = events(GeminiCli(), GEMINI_TOOLERR)
    outputs = [e for e in said if isinstance(e, ToolOutput)]
    assert outputs[0].error and outputs[0].text.startswith("Path not in workspace:")
    # a shell command that exits 3 is a success for Gemini CLI, which reports only its output
    assert outputs[1] == ToolOutput("to-stderr", False)
    assert said[-1] == Final("All done: I wrote hello.txt and ran `cat` on it.", None)
    assert usage.turns == 3


def test_gemini_api_error():
    said, usage = events(GeminiCli(), GEMINI_ERROR400)
    assert said[-1] == Final("", "model API error (400 INVALID_ARGUMENT): stub says error400")
    assert usage == Usage(turns=0)


def test_gemini_invalid_response_takes_the_reason_from_the_error_line():
    said, usage = events(GeminiCli(), GEMINI_EMPTY_RESPONSE)
    reason = "The model returned an empty response with no text or thoughts. This may be a transient API issue; please try again."
    assert said[1] == Note(f"[gemini-cli] error: {reason}")
    assert said[-1] == Final("", reason)
    assert (usage.input_tokens, usage.output_tokens) == (4000, 80)


def test_gemini_killed_mid_answer_leaves_no_final():
    said, usage = events(GeminiCli(), GEMINI_SIGTERM_GROUP)
    assert kinds(said) == ["Note"]  # the half-streamed text is never complete
    assert usage.turns == 1


def test_gemini_error_line_is_a_note_not_the_answer():
    adapter, usage = GeminiCli(), Usage()
    adapter.parse({"type": "message", "role": "assistant", "content": "The answer.", "delta": True}, usage)
    warning = {
        "type": "error",
        "timestamp": "x",
        "severity": "warning",
        "message": "Loop detected, stopping execution",
    }
    assert adapter.parse(warning, usage) == [
        Text("The answer."),
        Note("[gemini-cli] warning: Loop detected, stopping execution"),
    ]
    result = {
        "type": "result",
        "status": "success",
        "stats": {"input_tokens": 10, "output_tokens": 2, "total_tokens": 15},
    }
    assert adapter.parse(result, usage) == [Final("The answer.", None)]
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)  # thinking tokens are output too


def test_gemini_error_text():
    assert _gemini_error({"type": "FatalTurnLimitedError", "message": "Reached max session turns"}) == (
        "FatalTurnLimitedError: Reached max session turns"
    )
    assert (
        _gemini_error({"type": "unknown", "message": "[API Error: not json]"}) == "model API error: not json"
    )


def test_gemini_through_the_entrypoint():
    outcome, log = follow(GeminiCli(), GEMINI_OK)
    assert outcome.summary == "All done: I wrote hello.txt and ran `cat` on it." and outcome.error is None
    assert "→ write_file" in log and "  ← hello from the stub done-from-shell" in log
    assert "Write hello.txt, then cat it." not in log
    outcome, log = follow(GeminiCli(), GEMINI_OK, Limits(max_turns=1))
    assert outcome.limit == "maxTurns: 2 turns, more than the limit of 1"


# --- OpenCode -------------------------------------------------------------------------------------------


def test_opencode_command_reads_the_prompt_from_stdin():
    argv = OpenCode().command("anthropic/claude-sonnet-4-5", ["--agent", "build"], {})
    assert argv == [
        "opencode",
        "run",
        "--format",
        "json",
        "--auto",
        "--model",
        "anthropic/claude-sonnet-4-5",
        "--agent",
        "build",
    ]
    assert OpenCode().command(None, [], {}) == ["opencode", "run", "--format", "json", "--auto"]


def test_opencode_conversation():
    said, usage = events(OpenCode(), OPENCODE_OK)
    assert kinds(said) == ["Text", "ToolCall", "ToolOutput", "ToolCall", "ToolOutput", "Text"]
    assert said[0] == Text("I'll write the file first.")
    assert said[1] == ToolCall("write", '{"content": "hello from the stub\\n", "filePath": "hello.txt"}')
    assert said[2] == ToolOutput("Wrote file successfully.")
    assert said[3] == ToolCall("bash", '{"command": "cat hello.txt && echo done-from-shell"}')
    assert said[4] == ToolOutput("hello from the stub done-from-shell")
    assert said[5] == Text("All done: I wrote hello.txt and ran `cat` on it.")
    assert usage == Usage(input_tokens=3300, output_tokens=63, cost_usd=None, turns=3)  # no price: cost 0


def test_opencode_tool_errors():
    said, _ = events(OpenCode(), OPENCODE_TOOLERR)
    outputs = [e for e in said if isinstance(e, ToolOutput)]
    assert outputs[0] == ToolOutput("NotFound: FileSystem.makeDirectory (/proc/nonexistent)", True)
    assert outputs[1] == ToolOutput("[exit 3] to-stderr", False)


def test_opencode_rejected_permission():
    said, _ = events(OpenCode(), OPENCODE_NOPERM_TOOLERR)
    assert ToolOutput("The user rejected permission to use this specific tool call.", True) in said


def test_opencode_api_error_is_final():
    said, usage = events(OpenCode(), OPENCODE_ERROR400)
    assert said == [Final("", "APIError: stub says error400")]
    assert usage == Usage()
    said, _ = events(OpenCode(), OPENCODE_REFUSED)
    assert said == [
        Final(
            "", "APIError: Cannot connect to API: Unable to connect. Is the computer able to access the url?"
        )
    ]


def test_opencode_killed_mid_answer():
    said, usage = events(OpenCode(), OPENCODE_SIGTERM_GROUP)
    assert said == [] and usage.turns == 1


def test_opencode_usage_adds_cache_and_reasoning_and_cost():
    adapter, usage = OpenCode(), Usage()
    line = json.loads(OPENCODE_OK.strip().splitlines()[3])  # a real step_finish, with made-up numbers
    line["part"]["tokens"] = {
        "total": 0,
        "input": 100,
        "output": 20,
        "reasoning": 7,
        "cache": {"write": 30, "read": 400},
    }
    line["part"]["cost"] = 0.0125
    adapter.parse(line, usage)
    adapter.parse(line, usage)
    assert usage == Usage(input_tokens=1060, output_tokens=54, cost_usd=0.025, turns=0)


def test_opencode_through_the_entrypoint():
    outcome, log = follow(OpenCode(), OPENCODE_OK)
    assert outcome.summary == "All done: I wrote hello.txt and ran `cat` on it." and outcome.error is None
    assert "→ bash cat hello.txt" not in log and "→ bash {" in log
    outcome, _ = follow(OpenCode(), OPENCODE_OK, Limits(max_tokens=1500))
    assert outcome.limit == "maxTokens: 2141 tokens, more than the limit of 1500"
    outcome, log = follow(OpenCode(), OPENCODE_ERROR400)
    assert outcome.error == "APIError: stub says error400"
    assert "[taskyard-agent] the agent ended with APIError: stub says error400" in log
