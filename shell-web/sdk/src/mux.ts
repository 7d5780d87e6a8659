// A client for upf-mux.v1 (gateway/websocket/MUX.md): gRPC calls of every kind, multiplexed over
// one WebSocket to the UPF gateway, so that a page is not held to six HTTP/1.1 connections.
//
//   const mux = await MuxClient.connect("wss://gateway.example/api/mux");   // or new MuxClient(url): lazily
//   const reply = await mux.unary(method, request, { metadata: { authorization: "Bearer ..." } });
//   for await (const event of mux.serverStream(method, request, { signal })) { ... }
//   const total = await mux.clientStream(method, requests);        // any (async) iterable
//   for await (const reply of mux.bidi(method, requests)) { ... }
//
// A Method names the call and (de)serialises its messages: any protobuf runtime fits (see rawMethod
// for bytes in, bytes out). Calls end with a MuxError when their status is not OK, when they are
// cancelled (an AbortSignal) or when their deadline (timeoutMs) passes. Flow control is the
// protocol's: a stream's replies are granted again only as the application reads them, so a
// stream nobody reads holds up no other; requests wait for the gateway's credit.
//
// Requests given as a (sync) iterable, an array say, are read whole when the call begins, and its
// OPEN leaves with all of them that fit: one WebSocket message for a unary call. Requests given as
// an AsyncIterable are sent as they come, and the OPEN leaves as soon as the call has a stream,
// before the first of them: the server starts the call at once, and a bidi server that sends its
// headers before reading anything is heard (onHeader) before the first request.
//
// The client outlives its sockets, as an HTTP/2 channel outlives its connections. New calls go to
// the current socket; when there is none, the first call opens one (calls that arrive together
// share it). After the gateway's GOAWAY (it is draining) the calls it took run to
// their end on the old socket, which is closed once the last one ends, while new calls open a new
// socket (another gateway process answers). A call whose OPEN crossed the GOAWAY never reached a
// backend: when its requests were all at hand (a sync iterable) it is sent again, once, on the new
// socket, with its deadline, signal and metadata (gRPC's transparent retry); one whose requests
// are an AsyncIterable (some may have been read) fails with UNAVAILABLE, saying that it was not
// processed, and so does a call refused twice. A socket that is lost fails its calls with
// UNAVAILABLE; the next call opens another. A failed attempt holds the next one back (a growing,
// jittered delay) and the calls made meanwhile fail at once with UNAVAILABLE, so a gateway that is
// down is not hammered.

export const SUBPROTOCOL = "upf-mux.v1";

/** gRPC status codes. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const Frame = {
  SETTINGS: 0x01,
  OPEN: 0x02,
  DATA: 0x03,
  HALF_CLOSE: 0x04,
  CANCEL: 0x05,
  HEADERS: 0x06,
  TRAILERS: 0x07,
  WINDOW_UPDATE: 0x08,
  GOAWAY: 0x09,
} as const;

const HEADER_SIZE = 10;
const DEFAULT_WINDOW = 1 << 20;
const DEFAULT_CONNECT_TIMEOUT = 10_000;
const NORMAL_CLOSURE = 1000;

/** Response metadata: lower-case names; -bin values stay base64. */
export type Metadata = Record<string, string[]>;
/** Request metadata: a Uint8Array value needs a name ending in -bin (sent as base64). */
export type RequestMetadata = Record<string, string | Uint8Array | Array<string | Uint8Array>>;

export interface Method<I, O> {
  /** "/package.Service/Method" */
  readonly path: string;
  serialize(message: I): Uint8Array;
  deserialize(bytes: Uint8Array): O;
}

/** A method whose messages are already serialised. */
export function rawMethod(path: string): Method<Uint8Array, Uint8Array> {
  return { path, serialize: (m) => m, deserialize: (b) => b };
}

export interface CallOptions {
  metadata?: RequestMetadata;
  /** Aborting cancels the call (the gateway cancels it upstream); it ends with CANCELLED. */
  signal?: AbortSignal;
  /** The call's deadline, in milliseconds from now: sent to the gateway and kept here too. */
  timeoutMs?: number;
  onHeader?: (metadata: Metadata) => void;
  onTrailer?: (metadata: Metadata) => void;
}

/** The parts of a WebSocket this client uses: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** The WebSocket class; the global one by default (pass `ws`'s in Node). */
  WebSocket?: WebSocketConstructor;
  /** Reply bytes each stream may have in flight towards this client (its window). */
  streamWindow?: number;
  /** Milliseconds to wait for a socket to open (and the gateway's SETTINGS); 10 s by default. */
  connectTimeoutMs?: number;
  /** How long a failed connection attempt holds back the next one. */
  reconnect?: ReconnectOptions;
}

/**
 * The delay after the n-th failed attempt in a row is initialDelayMs * multiplier^(n-1), at most
 * maxDelayMs, spread by +-jitter (a fraction) so that many pages do not come back all at once.
 * The first attempt after a socket was open, or after a GOAWAY, is never delayed.
 */
export interface ReconnectOptions {
  /** 1000 by default. */
  initialDelayMs?: number;
  /** 30000 by default. */
  maxDelayMs?: number;
  /** 1.6 by default. */
  multiplier?: number;
  /** 0.2 by default. */
  jitter?: number;
}

export interface Settings {
  maxStreams: number;
  maxMessageBytes: number;
  streamWindow: number;
  connectionWindow: number;
  maxFrameBytes: number;
}

export class MuxError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
    readonly metadata: Metadata = {},
  ) {
    super(`${statusName(code)}: ${details}`);
    this.name = "MuxError";
  }
}

export function statusName(code: number): string {
  return Object.entries(Status).find(([, value]) => value === code)?.[0] ?? `status ${code}`;
}

// --- bytes ------------------------------------------------------------------------------------

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function frame(type: number, streamId: number, payload?: Uint8Array): Uint8Array {
  const length = payload?.length ?? 0;
  const bytes = new Uint8Array(HEADER_SIZE + length);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, type);
  view.setUint32(2, streamId);
  view.setUint32(6, length);
  if (payload) bytes.set(payload, HEADER_SIZE);
  return bytes;
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function toBase64(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

function metadataBlock(metadata: RequestMetadata | undefined): string {
  let block = "";
  for (const [rawName, raw] of Object.entries(metadata ?? {})) {
    const name = rawName.toLowerCase();
    for (const value of Array.isArray(raw) ? raw : [raw]) {
      if (value instanceof Uint8Array) {
        if (!name.endsWith("-bin")) throw new TypeError(`binary metadata ${name} needs a name ending in -bin`);
        block += `${name}: ${toBase64(value)}\r\n`;
      } else {
        if (/[\r\n]/.test(value)) throw new TypeError(`metadata ${name} has a line break in its value`);
        block += `${name}: ${value}\r\n`;
      }
    }
  }
  return block;
}

function parseBlock(bytes: Uint8Array): Metadata {
  const metadata: Metadata = {};
  for (const line of decoder.decode(bytes).split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    (metadata[name] ??= []).push(line.slice(colon + 1).trim());
  }
  return metadata;
}

function grpcFrame(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

// --- one call ---------------------------------------------------------------------------------

type Waiter = () => void;

/** What a client assumes until a socket's SETTINGS say otherwise. */
const DEFAULT_SETTINGS: Settings = {
  maxStreams: 100,
  maxMessageBytes: 4 << 20,
  streamWindow: 0,
  connectionWindow: 0,
  maxFrameBytes: 4 << 20,
};

class Stream {
  conn: Connection | null = null; // the socket the call runs on, once it has a stream there
  id = 0; // given when the OPEN leaves: ids must increase on the wire in the order OPENs are sent
  sendWindow = 0;
  maxMessage = DEFAULT_SETTINGS.maxMessageBytes;
  owed = 0; // reply bytes read by the application, not yet granted again
  ended = false; // TRAILERS arrived, or the call failed here
  closed = false; // TRAILERS arrived (or never will): the gateway no longer counts the stream
  error: MuxError | null = null;
  headers: Metadata | null = null;
  /** Sends the call again from its OPEN; set while that is safe (see refused). */
  resend: (() => void) | null = null;
  readonly replies: Uint8Array[] = [];
  private partial = new Uint8Array(0);
  private readonly waiters = new Set<Waiter>();

  constructor(
    readonly window: number,
    readonly options: CallOptions,
    /** performance.now() at which the call's deadline passes. */
    readonly deadline: number | undefined,
  ) {}

  /** Resolves at the next change: a reply, a window, the end. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.add(resolve));
  }

  wake(): void {
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const resolve of waiting) resolve();
  }

  /** DATA bytes: whole gRPC messages are queued for the reader; the rest waits for more. */
  onData(data: Uint8Array): MuxError | null {
    let buffer = this.partial.length ? concat([this.partial, data]) : data;
    let offset = 0;
    while (buffer.length - offset >= 5) {
      const view = new DataView(buffer.buffer, buffer.byteOffset + offset);
      if (view.getUint8(0) & 1) return new MuxError(Status.INTERNAL, "the gateway sent a compressed message");
      const length = view.getUint32(1);
      if (length > this.maxMessage) {
        return new MuxError(Status.RESOURCE_EXHAUSTED, `a reply of ${length} bytes is over the limit`);
      }
      if (buffer.length - offset - 5 < length) break;
      this.replies.push(buffer.slice(offset + 5, offset + 5 + length));
      offset += 5 + length;
    }
    this.partial = buffer.slice(offset);
    this.wake();
    return null;
  }

  /** Why a call that ended before it had a stream ended. */
  outcome(): MuxError {
    return this.error ?? new MuxError(Status.CANCELLED, "the call ended");
  }

  fail(error: MuxError): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
  }

  /**
   * The gateway will never process this stream (its OPEN crossed a GOAWAY): no backend has seen
   * it, so a call that can be sent again (its requests all at hand, no answer yet) is, once, on
   * another socket: gRPC's transparent retry. Any other fails with `error`.
   */
  refused(error: MuxError): void {
    const resend = this.resend;
    this.resend = null;
    if (resend === null || this.ended) {
      this.fail(error);
      return;
    }
    this.conn = null;
    this.id = 0;
    this.closed = false;
    this.wake(); // an attempt still waiting for credit on the old socket gives up
    resend();
  }
}

/** The OPEN payload: made when the call gets its stream, so that the timeout sent is what is left of it. */
function openPayload(stream: Stream, path: Uint8Array, block: Uint8Array): Uint8Array {
  const payload = new Uint8Array(10 + path.length + block.length);
  const view = new DataView(payload.buffer);
  view.setUint32(0, stream.window);
  view.setUint32(4, stream.deadline !== undefined ? Math.max(1, Math.ceil(stream.deadline - performance.now())) : 0);
  view.setUint16(8, path.length);
  payload.set(path, 10);
  payload.set(block, 10 + path.length);
  return payload;
}

/** The serialised messages of a streamed call, as its application produces them. */
async function* serialized<I>(requests: AsyncIterable<I>, method: Method<I, unknown>): AsyncGenerator<Uint8Array> {
  for await (const message of requests) yield method.serialize(message);
}

/** Why a call whose requests could not be sent ends. */
function requestFailure(error: unknown): MuxError {
  return error instanceof MuxError ? error : new MuxError(Status.CANCELLED, `the request stream failed: ${String(error)}`);
}

function closeText(code: number, reason: string): string {
  return `the socket closed (${code}${reason ? `: ${reason}` : ""})`;
}

// --- one socket -------------------------------------------------------------------------------

/** One WebSocket and the streams on it; MuxClient decides which calls come here. */
class Connection {
  settings: Settings = DEFAULT_SETTINGS;
  /** Request DATA bytes all streams together may still send (the gateway's connection window). */
  window = 0;
  /** The gateway's GOAWAY: streams up to lastStreamId run on here, no stream is opened any more. */
  goaway: { lastStreamId: number; reason: string } | null = null;
  /** Why the socket ended; null while it is open. */
  ended: string | null = null;
  readonly calls = new Set<Stream>(); // streams counted against maxStreams, opened or about to be
  private readonly streams = new Map<number, Stream>(); // by id, once their OPEN has left
  private nextId = 1;
  private ready = false; // SETTINGS arrived
  private settingsArrived: Waiter | null = null;
  private readonly windowWaiters = new Set<Waiter>(); // streams waiting for connection credit
  private readonly slotWaiters = new Set<Waiter>(); // calls waiting for a stream (maxStreams)

  private constructor(
    private readonly socket: WebSocketLike,
    private readonly onEnd: (conn: Connection) => void,
  ) {}

  /** A socket to `url` once the gateway's SETTINGS have arrived; UNAVAILABLE when none can be had. */
  static open(
    url: string,
    WebSocket: WebSocketConstructor,
    timeoutMs: number,
    onEnd: (conn: Connection) => void,
  ): Promise<Connection> {
    return new Promise((resolve, reject) => {
      let socket: WebSocketLike;
      try {
        socket = new WebSocket(url, SUBPROTOCOL);
      } catch (error) {
        reject(new MuxError(Status.UNAVAILABLE, `cannot open a socket to ${url}: ${String(error)}`));
        return;
      }
      socket.binaryType = "arraybuffer";
      const conn = new Connection(socket, onEnd);
      let failure = ""; // why the socket failed to open, when something said so
      const timer = setTimeout(() => {
        failure = `no answer within ${timeoutMs} ms`;
        reject(new MuxError(Status.UNAVAILABLE, `no connection to ${url}: ${failure}`));
        socket.close();
      }, timeoutMs);
      conn.settingsArrived = () => {
        clearTimeout(timer);
        resolve(conn);
      };
      socket.onopen = () => {
        if (socket.protocol !== SUBPROTOCOL) {
          failure = `the server chose the subprotocol "${socket.protocol}", not ${SUBPROTOCOL}`;
          socket.close(NORMAL_CLOSURE); // scripts may close with 1000 (or 3000-4999) only
        }
      };
      // Node's `ws` says why (ECONNREFUSED, "Unexpected server response: 503"); browsers never do.
      socket.onerror = (event) => {
        const message = (event as { message?: unknown } | null)?.message;
        if (!failure && typeof message === "string") failure = message;
      };
      socket.onmessage = (event) => conn.onMessage(event.data);
      socket.onclose = (event) => {
        clearTimeout(timer);
        const opened = conn.ready;
        conn.onClose(event.code, event.reason);
        if (!opened) {
          reject(new MuxError(Status.UNAVAILABLE, `no connection to ${url}: ${failure || closeText(event.code, event.reason)}`));
        }
      };
    });
  }

  /** New streams may be opened here. */
  get accepting(): boolean {
    return this.ready && this.goaway === null && this.ended === null;
  }

  /** Counts `stream` against maxStreams here; false when this socket takes no new stream now. */
  admit(stream: Stream): boolean {
    if (!this.accepting || this.calls.size >= this.settings.maxStreams) return false;
    this.calls.add(stream);
    stream.conn = this;
    stream.sendWindow = this.settings.streamWindow;
    stream.maxMessage = this.settings.maxMessageBytes;
    return true;
  }

  /** Resolves once a stream may have become free here, or the socket takes no new ones at all. */
  slotFreed(): Promise<void> {
    return new Promise((resolve) => this.slotWaiters.add(resolve));
  }

  /** Gives an admitted stream its id as its OPEN leaves; after a GOAWAY the OPEN must not go: refused, false. */
  register(stream: Stream): boolean {
    if (this.goaway !== null) {
      this.refuse(stream);
      return false;
    }
    stream.id = this.nextId++;
    this.streams.set(stream.id, stream);
    return true;
  }

  send(bytes: Uint8Array): void {
    if (this.ended === null) this.socket.send(bytes);
  }

  /** Resolves when connection credit arrives, or anything happens to the stream. */
  credit(stream: Stream): Promise<void> {
    return new Promise((resolve) => {
      this.windowWaiters.add(resolve);
      void stream.changed().then(resolve);
    });
  }

  consumed(stream: Stream, size: number): void {
    stream.owed += size;
    if (!stream.ended && stream.owed >= stream.window / 2) {
      const increment = new Uint8Array(4);
      new DataView(increment.buffer).setUint32(0, stream.owed);
      this.send(frame(Frame.WINDOW_UPDATE, stream.id, increment));
      stream.owed = 0;
    }
  }

  cancel(stream: Stream): void {
    if (stream.id !== 0) this.send(frame(Frame.CANCEL, stream.id));
  }

  forget(stream: Stream): void {
    // The gateway counts a stream against maxStreams until its TRAILERS, which a cancelled call
    // still gets: until they come, it keeps its slot here too.
    if (stream.id !== 0 && !stream.closed && this.ended === null) return;
    this.streams.delete(stream.id);
    if (this.calls.delete(stream)) {
      this.wakeSlotWaiters();
      this.closeIfDrained();
    }
  }

  /** The error of a call this socket can no longer open: the gateway has not processed it. */
  refusal(): MuxError {
    const reason = this.goaway?.reason ?? this.ended ?? "";
    return new MuxError(
      Status.UNAVAILABLE,
      `the gateway went away before it took this call (${reason}); the call was not processed and may be retried`,
    );
  }

  close(): void {
    this.socket.close(NORMAL_CLOSURE);
  }

  /** A stream the gateway will not process: off this socket, then sent again or failed (Stream.refused). */
  private refuse(stream: Stream): void {
    stream.closed = true; // its TRAILERS (the refusal), if its OPEN went, free nothing on the gateway's side
    this.forget(stream);
    stream.refused(this.refusal());
  }

  private closeIfDrained(): void {
    if (this.goaway !== null && this.calls.size === 0 && this.ended === null) this.close();
  }

  private wakeSlotWaiters(): void {
    // All of them: each checks again, and one that gave up (aborted) must not swallow the wake-up.
    const waiting = [...this.slotWaiters];
    this.slotWaiters.clear();
    for (const resolve of waiting) resolve();
  }

  // --- from the gateway ---------------------------------------------------------------------

  private onMessage(data: unknown): void {
    const bytes = new Uint8Array(data as ArrayBuffer);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let offset = 0;
    while (offset + HEADER_SIZE <= bytes.length) {
      const type = view.getUint8(offset);
      const id = view.getUint32(offset + 2);
      const length = view.getUint32(offset + 6);
      const payload = bytes.subarray(offset + HEADER_SIZE, offset + HEADER_SIZE + length);
      offset += HEADER_SIZE + length;
      this.onFrame(type, id, payload);
    }
  }

  private onFrame(type: number, id: number, payload: Uint8Array): void {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    if (id === 0) {
      if (type === Frame.SETTINGS) {
        this.settings = {
          maxStreams: view.getUint32(2),
          maxMessageBytes: view.getUint32(6),
          streamWindow: view.getUint32(10),
          connectionWindow: view.getUint32(14),
          maxFrameBytes: view.getUint32(18),
        };
        this.window = this.settings.connectionWindow;
        this.ready = true;
        const arrived = this.settingsArrived;
        this.settingsArrived = null;
        arrived?.();
      } else if (type === Frame.WINDOW_UPDATE) {
        this.window += view.getUint32(0);
        const waiting = [...this.windowWaiters];
        this.windowWaiters.clear();
        for (const resolve of waiting) resolve();
      } else if (type === Frame.GOAWAY) {
        this.onGoaway(view.getUint32(0), decoder.decode(payload.subarray(6)));
      }
      return;
    }
    const stream = this.streams.get(id);
    if (!stream) return;
    if (stream.ended) {
      // A call this client has given up on: only its TRAILERS matter, which free its slot.
      if (type === Frame.TRAILERS) {
        stream.closed = true;
        this.forget(stream);
      }
      return;
    }
    if (type === Frame.HEADERS || type === Frame.DATA) stream.resend = null; // processed: never sent again
    if (type === Frame.HEADERS) {
      stream.headers = parseBlock(payload);
      stream.options.onHeader?.(stream.headers);
    } else if (type === Frame.DATA) {
      const error = stream.onData(payload);
      if (error) {
        stream.fail(error);
        this.cancel(stream);
      }
    } else if (type === Frame.TRAILERS) {
      const code = view.getUint16(0);
      const length = view.getUint16(2);
      const message = decoder.decode(payload.subarray(4, 4 + length));
      const metadata = parseBlock(payload.subarray(4 + length));
      stream.ended = true;
      stream.closed = true;
      stream.options.onTrailer?.(metadata);
      if (code !== Status.OK) stream.error = new MuxError(code, message, metadata);
      stream.wake();
    } else if (type === Frame.WINDOW_UPDATE) {
      stream.sendWindow += view.getUint32(0);
      stream.wake();
    }
  }

  /**
   * The gateway is draining (or failing, then it closes at once): the streams it took run to
   * their end; those above its last id were never seen by a backend, and will only get the
   * gateway's refusal, so they are refused now (sent again elsewhere, or failed). New calls go to
   * another socket (MuxClient).
   */
  private onGoaway(lastStreamId: number, reason: string): void {
    const last = Math.min(lastStreamId, this.goaway?.lastStreamId ?? lastStreamId);
    this.goaway = { lastStreamId: last, reason };
    for (const stream of [...this.streams.values()]) {
      if (stream.id > last) this.refuse(stream);
    }
    this.wakeSlotWaiters();
    this.closeIfDrained();
  }

  private onClose(code: number, reason: string): void {
    this.ended = closeText(code, reason);
    const error = new MuxError(
      Status.UNAVAILABLE,
      `the connection to the gateway ended before the call did: ${this.goaway?.reason ?? this.ended}`,
    );
    for (const stream of this.calls) stream.fail(error);
    this.streams.clear();
    this.wakeSlotWaiters();
    const waiting = [...this.windowWaiters];
    this.windowWaiters.clear();
    for (const resolve of waiting) resolve();
    this.onEnd(this);
  }
}

// --- the client -------------------------------------------------------------------------------

export class MuxClient {
  private readonly WebSocket: WebSocketConstructor;
  private readonly streamWindow: number;
  private current: Connection | null = null; // where new calls go, while it takes them
  private attempt: Promise<Connection> | null = null; // the socket being opened, shared by the calls that wait
  private readonly connections = new Set<Connection>(); // every open socket, draining ones too
  private readonly calls = new Set<Stream>(); // every call running, whether it has a stream yet or not
  private failures = 0; // failed attempts in a row
  private retryAt = 0; // performance.now() before which no attempt is made
  private lastFailure = "";
  private closed = false;

  /** A client that opens its first socket when a call needs one. */
  constructor(
    readonly url: string,
    private readonly options: ConnectOptions = {},
  ) {
    const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocket) throw new TypeError("no WebSocket class: pass ConnectOptions.WebSocket");
    this.WebSocket = WebSocket;
    this.streamWindow = options.streamWindow ?? DEFAULT_WINDOW;
  }

  /** A client whose first socket is open; fails with UNAVAILABLE when the gateway cannot be reached. */
  static async connect(url: string, options: ConnectOptions = {}): Promise<MuxClient> {
    const client = new MuxClient(url, options);
    await client.connection();
    return client;
  }

  /** The gateway's SETTINGS on the socket new calls go to (defaults while there is none). */
  get settings(): Settings {
    return this.current?.settings ?? DEFAULT_SETTINGS;
  }

  /** Calls running now. */
  get activeCalls(): number {
    return this.calls.size;
  }

  /** Close every socket: calls still running end with CANCELLED (the gateway cancels them upstream), and so do later ones. */
  close(): void {
    this.closed = true;
    const error = new MuxError(Status.CANCELLED, "the client was closed");
    for (const stream of this.calls) stream.fail(error);
    for (const conn of this.connections) conn.close();
    this.current = null;
  }

  async unary<I, O>(method: Method<I, O>, request: I, options: CallOptions = {}): Promise<O> {
    return this.single(method, this.run(method, [request], options));
  }

  serverStream<I, O>(method: Method<I, O>, request: I, options: CallOptions = {}): AsyncIterable<O> {
    return this.run(method, [request], options);
  }

  async clientStream<I, O>(
    method: Method<I, O>,
    requests: AsyncIterable<I> | Iterable<I>,
    options: CallOptions = {},
  ): Promise<O> {
    return this.single(method, this.run(method, requests, options));
  }

  bidi<I, O>(method: Method<I, O>, requests: AsyncIterable<I> | Iterable<I>, options: CallOptions = {}): AsyncIterable<O> {
    return this.run(method, requests, options);
  }

  // --- sockets ------------------------------------------------------------------------------

  /** The socket new calls go to: the current one, or the one being opened, or a new attempt. */
  private connection(): Promise<Connection> {
    if (this.closed) return Promise.reject(new MuxError(Status.CANCELLED, "the client was closed"));
    if (this.current?.accepting) return Promise.resolve(this.current);
    if (this.attempt === null) {
      const wait = Math.ceil(this.retryAt - performance.now());
      if (wait > 0) {
        const message = `${this.lastFailure}; the next attempt is in ${wait} ms`;
        return Promise.reject(new MuxError(Status.UNAVAILABLE, message));
      }
      const attempt = this.open();
      this.attempt = attempt;
      attempt.catch(() => {}); // the calls waiting for it may all have ended meanwhile
    }
    return this.attempt;
  }

  private async open(): Promise<Connection> {
    const timeout = this.options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT;
    let conn: Connection;
    try {
      conn = await Connection.open(this.url, this.WebSocket, timeout, (ended) => this.ended(ended));
    } catch (error) {
      this.failures += 1;
      this.retryAt = performance.now() + this.backoff();
      this.lastFailure = error instanceof MuxError ? error.details : String(error);
      throw error;
    } finally {
      this.attempt = null;
    }
    this.failures = 0;
    this.retryAt = 0;
    if (this.closed) {
      conn.close();
      throw new MuxError(Status.CANCELLED, "the client was closed");
    }
    if (conn.ended === null) this.connections.add(conn); // it may have ended in the frames that opened it
    this.current = conn;
    return conn;
  }

  private ended(conn: Connection): void {
    this.connections.delete(conn);
    if (this.current === conn) this.current = null;
  }

  /** Milliseconds the attempt after `failures` failed ones in a row waits. */
  private backoff(): number {
    const { initialDelayMs = 1000, maxDelayMs = 30_000, multiplier = 1.6, jitter = 0.2 } = this.options.reconnect ?? {};
    const delay = Math.min(maxDelayMs, initialDelayMs * multiplier ** (this.failures - 1));
    return Math.min(maxDelayMs, delay * (1 + jitter * (2 * Math.random() - 1)));
  }

  /** A socket with a stream free for the call, counted there; fails when none can be had or the call ends first. */
  private async admit(stream: Stream): Promise<Connection> {
    while (true) {
      const conn = await this.until(stream, this.connection());
      if (stream.ended) throw stream.outcome();
      if (conn.admit(stream)) return conn;
      // Every stream is taken (maxStreams): wait for one; after a GOAWAY, go round for a new socket.
      if (conn.accepting) await this.until(stream, conn.slotFreed());
    }
  }

  /** What `promise` gives, unless the call ends first (aborted, past its deadline, the client closed). */
  private async until<T>(stream: Stream, promise: Promise<T>): Promise<T> {
    while (!stream.ended) {
      const settled = await Promise.race([promise.then((value) => ({ value })), stream.changed().then(() => null)]);
      if (settled !== null && !stream.ended) return settled.value;
    }
    throw stream.outcome();
  }

  // --- calls --------------------------------------------------------------------------------

  private async single<I, O>(method: Method<I, O>, replies: AsyncIterable<O>): Promise<O> {
    let reply: O | undefined;
    let count = 0;
    for await (const message of replies) {
      reply = message;
      count += 1;
    }
    if (count !== 1) {
      throw new MuxError(Status.UNIMPLEMENTED, `${method.path} answered ${count} messages; expected exactly one`);
    }
    return reply as O;
  }

  private async *run<I, O>(
    method: Method<I, O>,
    requests: AsyncIterable<I> | Iterable<I>,
    options: CallOptions,
  ): AsyncGenerator<O, void, undefined> {
    const { signal, timeoutMs } = options;
    if (signal?.aborted) throw new MuxError(Status.CANCELLED, "aborted before the call began");
    const block = encoder.encode(metadataBlock(options.metadata)); // bad metadata throws before anything happens
    const deadline = timeoutMs !== undefined ? performance.now() + timeoutMs : undefined;
    const stream = new Stream(this.streamWindow, options, deadline);
    this.calls.add(stream);
    const abort = () => this.cancel(stream, new MuxError(Status.CANCELLED, "the call was aborted"));
    signal?.addEventListener("abort", abort);
    const timer =
      timeoutMs !== undefined
        ? setTimeout(() => this.cancel(stream, new MuxError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")), timeoutMs + 50)
        : undefined; // a little after the gateway's own deadline, whose status is the one to report
    // Not awaited at the end: a request iterable may wait for something that never comes once the
    // call is over; whatever it yields then is dropped.
    void this.sendAll(stream, encoder.encode(method.path), block, method, requests);
    try {
      while (true) {
        const next = stream.replies.shift();
        if (next !== undefined) {
          stream.conn?.consumed(stream, next.length + 5);
          yield method.deserialize(next);
          continue;
        }
        if (stream.ended) break;
        await stream.changed();
      }
      if (stream.error) throw stream.error;
    } finally {
      signal?.removeEventListener("abort", abort);
      if (timer !== undefined) clearTimeout(timer);
      // A consumer that stops reading early (break, throw) abandons the call.
      if (!stream.ended) this.cancel(stream, new MuxError(Status.CANCELLED, "the reader stopped"));
      this.calls.delete(stream);
      stream.conn?.forget(stream);
    }
  }

  private sendAll<I, O>(
    stream: Stream,
    path: Uint8Array,
    block: Uint8Array,
    method: Method<I, O>,
    requests: AsyncIterable<I> | Iterable<I>,
  ): void {
    if (!(Symbol.iterator in requests)) {
      void this.transmit(stream, path, block, serialized(requests, method));
      return;
    }
    let messages: Uint8Array[];
    try {
      messages = Array.from(requests, (message) => method.serialize(message));
    } catch (error) {
      this.cancel(stream, requestFailure(error));
      return;
    }
    // All at hand: a call the gateway refuses unseen can be sent again (Stream.refused).
    stream.resend = () => void this.transmit(stream, path, block, messages);
    void this.transmit(stream, path, block, messages);
  }

  /** One attempt at the call, on one socket: its OPEN, its messages as the windows allow, HALF_CLOSE. */
  private async transmit(
    stream: Stream,
    path: Uint8Array,
    block: Uint8Array,
    messages: Uint8Array[] | AsyncIterable<Uint8Array>,
  ): Promise<void> {
    try {
      // The OPEN is made once the call has its stream, and leaves before anything else can happen
      // (no I/O in between): so a GOAWAY that the socket has seen sends the call to another
      // socket, and one still on its way refuses it.
      const conn = await this.admit(stream);
      let frames: Array<[number, Uint8Array | undefined]> = [[Frame.OPEN, openPayload(stream, path, block)]];
      // False once the call has ended, or was refused here (another attempt may have it now).
      const live = () => !stream.ended && stream.conn === conn;
      const flush = () => {
        if (frames.length && live() && (stream.id !== 0 || conn.register(stream))) {
          conn.send(concat(frames.map(([type, payload]) => frame(type, stream.id, payload))));
        }
        frames = [];
      };
      const push = async (bytes: Uint8Array) => {
        if (bytes.length > conn.settings.maxMessageBytes) {
          throw new MuxError(Status.RESOURCE_EXHAUSTED, `a request of ${bytes.length} bytes is over the limit`);
        }
        let data = grpcFrame(bytes);
        while (data.length && live()) {
          const size = Math.min(data.length, stream.sendWindow, conn.window, conn.settings.maxFrameBytes);
          if (size === 0) {
            flush();
            await conn.credit(stream);
            continue;
          }
          frames.push([Frame.DATA, data.subarray(0, size)]);
          stream.sendWindow -= size;
          conn.window -= size;
          data = data.subarray(size);
        }
      };
      if (Array.isArray(messages)) {
        // The OPEN leaves with all the messages that fit: one WebSocket message for a unary call.
        for (const bytes of messages) {
          if (!live()) return;
          await push(bytes);
        }
      } else {
        // The OPEN leaves now, before the first message is produced: the server starts the call,
        // and a bidi server that answers its headers first is heard at once.
        flush();
        for await (const bytes of messages) {
          if (!live()) return;
          await push(bytes);
          flush(); // a streamed message leaves at once
        }
      }
      frames.push([Frame.HALF_CLOSE, undefined]);
      flush();
    } catch (error) {
      this.cancel(stream, requestFailure(error));
    }
  }

  private cancel(stream: Stream, error: MuxError): void {
    if (stream.ended) return;
    stream.fail(error);
    stream.conn?.cancel(stream);
  }
}
