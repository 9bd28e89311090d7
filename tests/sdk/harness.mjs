// Drives the Vercel AI SDK's own chat machinery (the `ai` package pinned in package.json: its
// AbstractChat, as useChat runs it, over DefaultChatTransport and TextStreamChatTransport) through a
// live flowgate. tests/protocols/test_ui_sdk.py starts the gateway and the backend, runs
//   node harness.mjs '{"base": "http://127.0.0.1:PORT", "key": "...", "runs": [...]}'
// and checks the JSON this prints on stdout (one object: {"runs": [result, ...]}).
//
// Each run: {"name", "transport": "ui" | "text", "flow", "texts": [message, ...], "reuseToken"?}.
// Every message gets a fresh single-use stream token from prepareSendMessagesRequest, as the
// README's useChat setup does (here the harness mints it with the API key; a browser app asks its
// own server); with reuseToken the first one is sent again.
import { AbstractChat, DefaultChatTransport, TextStreamChatTransport } from 'ai';

const config = JSON.parse(process.argv[2]);

// The chat state useChat keeps in React (ai's AbstractChat leaves it to the framework).
class State {
  status = 'ready';
  error = undefined;
  messages = [];
  pushMessage = m => { this.messages = this.messages.concat(m); };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (i, m) => {
    this.messages = [...this.messages.slice(0, i), this.snapshot(m), ...this.messages.slice(i + 1)];
  };
  snapshot = thing => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new State() });
  }
}

// The transport, unchanged, with each chunk it yields stamped on arrival.
function timed(Base, log) {
  return class extends Base {
    processResponseStream(stream) {
      return super.processResponseStream(stream).pipeThrough(new TransformStream({
        transform(chunk, controller) {
          log.push({ t: performance.now(), chunk });
          controller.enqueue(chunk);
        },
      }));
    }
  };
}

async function streamToken() {
  const resp = await fetch(`${config.base}/api/v1/token`, { headers: { 'x-api-key': config.key } });
  if (!resp.ok) throw new Error(`token: ${resp.status} ${await resp.text()}`);
  return (await resp.json()).token;
}

async function run({ name, transport, flow, texts, reuseToken = false }) {
  const chunks = [];
  const requests = [];
  const errors = [];
  const finishes = [];
  const Transport = timed(transport === 'ui' ? DefaultChatTransport : TextStreamChatTransport, chunks);
  const query = transport === 'ui' ? '&protocol=ui' : '';
  let kept = null; // reuseToken: the mistake a fresh token per message avoids
  const chat = new Chat({
    id: `chat-${name}`,
    transport: new Transport({
      prepareSendMessagesRequest: async ({ id, messages, trigger, messageId }) => {
        const token = reuseToken ? (kept ??= await streamToken()) : await streamToken();
        requests.push({ token_len: token.length, token_tail: token.slice(-6) });
        return {
          api: `${config.base}/api/v1/run/${flow}/stream?token=${encodeURIComponent(token)}${query}`,
          body: { id, messages, trigger, messageId },
        };
      },
    }),
    onError: error => errors.push(String(error?.message ?? error)),
    onFinish: ({ message, isError, isAbort, isDisconnect, finishReason }) =>
      finishes.push({ id: message.id, isError, isAbort, isDisconnect, finishReason: finishReason ?? null }),
  });
  const sends = [];
  for (const text of texts) {
    const from = chunks.length;
    const started = performance.now();
    await chat.sendMessage({ text });
    sends.push({ started, ended: performance.now(), from, to: chunks.length, status: chat.status,
                 error: chat.error ? String(chat.error.message) : null });
    if (chat.status === 'error') break;
  }
  return {
    name,
    sends,
    requests,
    errors,
    finishes,
    chunks,
    messages: chat.messages.map(m => ({
      id: m.id, role: m.role, metadata: m.metadata ?? null,
      text: m.parts.filter(p => p.type === 'text').map(p => p.text).join(''),
      parts: m.parts.map(p => p.type),
    })),
  };
}

const results = [];
for (const spec of config.runs) {
  try {
    results.push(await run(spec));
  } catch (err) {
    results.push({ name: spec.name, crashed: String(err?.stack ?? err) });
  }
}
process.stdout.write(JSON.stringify({ runs: results }) + '\n');
