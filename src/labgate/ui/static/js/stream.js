// One chat completion, streamed (fetch + ReadableStream, SSE parsed by hand) or whole, with its timings.
import { ApiError, baseUrl, gatewayUrl, headers, request } from "./api.js";

export function curlOf(body) {
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  return `curl ${gatewayUrl()}/v1/chat/completions \\\n  -H "Authorization: Bearer $LABGATE_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n  -d '${json}'`;
}

export function pythonOf(body) {
  const { model, messages, stream, ...rest } = body;
  const extra = Object.entries(rest).filter(([k]) => k !== "stream_options")
    .map(([k, v]) => `    ${k}=${JSON.stringify(v).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None")},\n`).join("");
  return `import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${gatewayUrl()}/v1", api_key=os.environ["LABGATE_KEY"])\n` +
    `answer = client.chat.completions.create(\n    model=${JSON.stringify(model)},\n    messages=${JSON.stringify(messages)},\n${extra}` +
    `    stream=${stream ? "True" : "False"},\n)\n`;
}

// run(body, {onText(delta, full), signal}) → {text, toolCalls, requestId, provider, usage, ttftMs, totalMs, tokensPerS, raw}
export async function run(body, { onText = () => {}, signal } = {}) {
  const started = performance.now();
  const answer = await fetch(`${baseUrl()}/v1/chat/completions`, {
    method: "POST", signal, headers: headers({ "content-type": "application/json" }), body: JSON.stringify(body),
  });
  const requestId = answer.headers.get("x-request-id");
  const provider = answer.headers.get("x-labgate-provider");
  const cache = answer.headers.get("x-labgate-cache"); // hit | miss | bypass | … (only when a cache is configured)
  if (!answer.ok) {
    let parsed = null;
    try { parsed = await answer.json(); } catch { /* not JSON */ }
    throw new ApiError(answer.status, parsed, requestId);
  }
  const out = { text: "", toolCalls: [], requestId, provider, cache, usage: null, ttftMs: null, totalMs: null,
                tokensPerS: null, raw: "", finish: null };
  if (!body.stream) {
    const data = await answer.json();
    out.totalMs = performance.now() - started;
    out.ttftMs = out.totalMs;
    const choice = (data.choices || [])[0] || {};
    out.text = (choice.message && choice.message.content) || "";
    out.toolCalls = (choice.message && choice.message.tool_calls) || [];
    out.finish = choice.finish_reason;
    out.usage = data.usage || null;
    out.raw = JSON.stringify(data, null, 2);
    onText(out.text, out.text);
  } else {
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const events = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data || data === "[DONE]") continue;
        events.push(data);
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(502, chunk, requestId);
        if (chunk.usage) out.usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (choice.finish_reason) out.finish = choice.finish_reason;
          for (const part of delta.tool_calls || []) { // streamed in pieces: merge by index
            const at = part.index ?? out.toolCalls.length;
            const call = out.toolCalls[at] || (out.toolCalls[at] = { id: part.id, type: "function", function: { name: "", arguments: "" } });
            if (part.id) call.id = part.id;
            if (part.function && part.function.name) call.function.name += part.function.name;
            if (part.function && part.function.arguments) call.function.arguments += part.function.arguments;
          }
          if (delta.content) {
            if (out.ttftMs === null) out.ttftMs = performance.now() - started;
            out.text += delta.content;
            onText(delta.content, out.text);
          }
        }
      }
    }
    out.totalMs = performance.now() - started;
    out.raw = events.map((e) => `data: ${e}`).join("\n\n");
  }
  const completion = out.usage && out.usage.completion_tokens;
  if (completion && out.totalMs) {
    const generating = out.totalMs - (body.stream ? out.ttftMs || 0 : 0);
    out.tokensPerS = generating > 0 ? (completion * 1000) / generating : null;
  }
  return out;
}

export async function models() {
  const list = await request("/v1/models");
  return list.data || [];
}
