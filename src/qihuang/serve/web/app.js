// qihuang web chat: streams /v1/chat/completions (SSE over fetch), shows citations as expandable source cards.
"use strict";
const log = document.getElementById("log");
const form = document.getElementById("ask");
const question = document.getElementById("question");
const statusLine = document.getElementById("status");
const sendBtn = document.getElementById("send");
const keyInput = document.getElementById("apikey");
let history = [];
let controller = null;

keyInput.value = localStorage.getItem("qihuang-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("qihuang-key", keyInput.value));

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function renderSources(box, citations) {
  box.replaceChildren();
  for (const c of citations || []) {
    const card = document.createElement("details");
    card.className = "source" + (c.cited ? " cited" : "");
    card.dataset.id = c.id;
    const summary = document.createElement("summary");
    summary.textContent = `[${c.index}] ${c.title}`;
    const quote = document.createElement("blockquote");
    quote.textContent = c.quote;
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = [c.dynasty, c.author].filter(Boolean).join("·");
    meta.textContent = `${who ? who + " · " : ""}passage ${c.id} · chars ${c.quote_start}–${c.quote_end}`;
    card.append(summary, quote, meta);
    box.appendChild(card);
  }
}

async function ask(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  const sources = document.createElement("div");
  sources.className = "sources";
  log.appendChild(sources);
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers["Authorization"] = "Bearer " + keyInput.value;
  controller = new AbortController();
  sendBtn.disabled = true;
  statusLine.textContent = "生成中…";
  let content = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers, signal: controller.signal,
      body: JSON.stringify({ messages: history, stream: true,
                             temperature: Number(document.getElementById("temperature").value) || 0,
                             retrieval: document.getElementById("cite").checked }),
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.citations) renderSources(sources, chunk.citations);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            content += delta.content;
            answer.textContent = content;
            log.scrollTop = log.scrollHeight;
          }
        }
      }
    }
    history.push({ role: "assistant", content });
    statusLine.textContent = "完成";
    answer.dataset.done = "1";
  } catch (err) {
    answer.className = "msg error";
    answer.textContent = (content ? content + "\n" : "") + "错误：" + err.message;
    history.pop();
    statusLine.textContent = "";
  } finally {
    sendBtn.disabled = false;
    controller = null;
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = question.value.trim();
  if (!text || controller) return;
  question.value = "";
  ask(text);
});

question.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
});

document.getElementById("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  log.replaceChildren();
  statusLine.textContent = "已开始新对话";
});
