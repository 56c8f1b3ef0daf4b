"""Runs inside the trial's container, under the OpenHands runtime tree's Python (`python -c`, nothing written
to the container): one OpenHands SDK conversation on the task's instruction, with the terminal tool.

Settings come from the environment the engine sets (`EVALKIT_OPENHANDS`: JSON; the instruction and the trial
key in their own variables). Every conversation event goes to `EVALKIT_EVENTS` as one JSON line; a model error
ends the run with one `{"evalkit_error": {"type", "message"}}` line there and exit code 3, which the host
reads to type the error. This file is plain Python for the tree's interpreter: it imports nothing of evalkit.
"""

import json
import os
import sys


def main() -> int:
    settings = json.loads(os.environ["EVALKIT_OPENHANDS"])
    events = open(settings["events"], "a", encoding="utf-8")

    def emit(record: dict) -> None:
        events.write(json.dumps(record, default=str) + "\n")
        events.flush()

    try:
        from openhands.sdk import LLM, Agent, Conversation, Tool
        from openhands.tools.terminal import TerminalTool

        llm = LLM(
            model="openai/" + settings["model"],
            base_url=settings["base_url"],
            api_key=os.environ["EVALKIT_MODEL_KEY"],
            usage_id="agent",
            native_tool_calling=True,
            force_string_serializer=settings["string_content"],
            num_retries=settings["num_retries"],
            temperature=settings["temperature"],
            max_output_tokens=settings["max_tokens"],
            drop_params=True,
        )
        agent = Agent(llm=llm, tools=[Tool(name=TerminalTool.name, params={"terminal_type": "subprocess"})])
        conversation = Conversation(
            agent=agent,
            workspace=os.getcwd(),
            callbacks=[lambda event: emit(json.loads(event.model_dump_json()))],
            max_iteration_per_run=settings["max_turns"],
            visualizer=None,
        )
        conversation.send_message(os.environ["EVALKIT_INSTRUCTION"])
        conversation.run()
    except Exception as exc:  # the host types it from the class names along the chain of causes
        chain = [exc]
        while chain[-1].__cause__ is not None and len(chain) < 10:
            chain.append(chain[-1].__cause__)
        names = [cls.__name__ for error in chain for cls in type(error).__mro__]
        root = chain[-1]
        emit({"evalkit_error": {"type": type(root).__name__, "types": names, "message": str(root)[:2000]}})
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


sys.exit(main())
