// One model call as a card: who was asked (replica), how long it took, the messages new in this request,
// and the answer with its tool calls. Shared by the trial page and the side-by-side comparison.
import { fmt, h, pre } from "../dom.js";

export function callCard(call) {
  const failed = call.error !== null || call.status === null || call.status >= 400;
  const usage = call.usage || {};
  const head = h("div", { class: "call-head" },
    h("strong", null, `#${call.index}`),
    call.seq !== null && call.seq !== undefined && call.seq !== call.index ? h("span", { class: "muted" }, ` seq ${call.seq}`) : null,
    h("span", { class: `status ${failed ? "bad" : "good"}` }, call.status ?? "no status"),
    h("span", null, call.protocol), call.stream ? h("span", { class: "muted" }, "stream") : null,
    call.replica ? h("span", { class: "replica", title: "the deployment that answered" }, call.replica) : null,
    h("span", { title: "latency (time to first byte)" }, `${fmt.secs(call.latency_sec)}${call.ttfb_sec !== null ? ` (${fmt.secs(call.ttfb_sec)})` : ""}`),
    h("span", { title: "tokens in / out" }, `${fmt.int(usage.input_tokens)} → ${fmt.int(usage.output_tokens)} tok`),
    call.cost_usd !== null ? h("span", null, fmt.usd(call.cost_usd)) : null,
  );
  const messages = call.messages.map((m) => h("div", { class: `msg role-${m.role}` },
    h("div", { class: "role" }, m.role, m.tool_call_id ? h("span", { class: "muted" }, ` (${m.tool_call_id})`) : null), pre(m.text)));
  const response = call.response;
  return h("article", { class: `call${failed ? " failed" : ""}`, "data-call": call.index },
    head,
    call.n_earlier ? h("p", { class: "muted small" }, `${call.n_earlier} earlier message${call.n_earlier === 1 ? "" : "s"} repeated in this request (not shown)`) : null,
    messages,
    call.error ? h("div", { class: "msg role-error" }, h("div", { class: "role" }, "error"), pre(call.error)) : null,
    call.attempts.length ? h("p", { class: "muted small" }, `tried ${call.attempts.length} replicas: `, call.attempts.map((a) => `${a.replica} → ${a.status ?? a.error}`).join("; ")) : null,
    response.reasoning ? h("div", { class: "msg role-reasoning" }, h("div", { class: "role" }, "reasoning"), pre(response.reasoning)) : null,
    response.text || !response.tool_calls.length ? h("div", { class: "msg role-answer" }, h("div", { class: "role" }, "answer"), pre(response.text || "(empty)")) : null,
    response.tool_calls.map((c) => h("div", { class: "msg role-toolcall" }, h("div", { class: "role" }, "tool call ", h("code", null, c.name), c.id ? h("span", { class: "muted" }, ` (${c.id})`) : null), pre(c.arguments))),
  );
}
