"""The README's OpenAI SDK example, as a new user would run it: the block taken from README.md,
given the audio it leaves to the reader and the address and key of a server, run in the client
env against the proxy; it prints what the fake vLLM makes of the audio."""

from __future__ import annotations

import asyncio
import base64
import textwrap
from pathlib import Path

import pytest

from devtools.fake_vllm import predict_text
from tests.compat.audio import speech_24k
from tests.compat.harness import CompatStack, upstream_utterances
from tests.processes import ROOT

pytestmark = pytest.mark.compat

README = ROOT / "README.md"


def python_block_after(marker: str) -> str:
    """The first ```python block after `marker` in the README."""
    text = README.read_text()
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start : text.index("```\n", start)]


async def test_the_readmes_openai_sdk_example_prints_the_transcript(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    block = python_block_after("The OpenAI SDK (")
    # What the example leaves to its reader: the audio, and the code around an async block.
    assert "pcm24k_base64" in block
    assert 'base_url="http://localhost:8000/v1"' in block
    block = block.replace("http://localhost:8000", stack.http_url).replace("change-me", stack.key)
    audio = base64.b64encode(speech_24k()).decode()
    program = (
        "import asyncio\n\n"
        f"pcm24k_base64 = {audio!r}\n\n\n"
        "async def main():\n"
        f"{textwrap.indent(block, '    ')}\n\n"
        "asyncio.run(main())\n"
    )
    script = tmp_path / "example.py"
    script.write_text(program)
    process = await asyncio.create_subprocess_exec(
        str(client_env / "bin" / "python"),
        str(script),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-3000:]
    (sent,) = upstream_utterances(stack.fake)
    assert out.decode().rstrip("\n") == predict_text(sent)
    assert predict_text(sent).strip()
