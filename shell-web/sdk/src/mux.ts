// A client for upf-mux.v1 (gateway/websocket/MUX.md): gRPC calls of every kind, multiplexed over
// one WebSocket to the UPF gateway, so that a page is not held to six HTTP/1.1 connections.
//
//   const mux = await MuxClient.connect("wss://gateway.example/api/mux");
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
  /** Milliseconds to wait for the socket to open. */
  connectTimeoutMs?: number;
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

class Stream {
  id = 0; // given when the OPEN leaves: ids must increase on the wire in the order OPENs are sent
  sendWindow: number;
  owed = 0; // reply bytes read by the application, not yet granted again
  ended = false; // TRAILERS arrived, or the call failed here
  closed = false; // TRAILERS arrived: the gateway no longer counts the stream
  error: MuxError | null = null;
  headers: Metadata | null = null;
  readonly replies: Uint8Array[] = [];
  private partial = new Uint8Array(0);
  private readonly waiters = new Set<Waiter>();

  constructor(
    readonly window: number,
    sendWindow: number,
    readonly maxMessage: number,
    readonly options: CallOptions,
  ) {
    this.sendWindow = sendWindow;
  }

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

  fail(error: MuxError): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
  }
}

// --- the socket -------------------------------------------------------------------------------

export class MuxClient {
  settings: Settings = {
    maxStreams: 100,
    maxMessageBytes: 4 << 20,
    streamWindow: 0,
    connectionWindow: 0,
    maxFrameBytes: 4 << 20,
  };
  /** Set once the socket has closed (or the gateway said GOAWAY): new calls fail with UNAVAILABLE. */
  closedReason: string | null = null;
  private readonly streams = new Map<number, Stream>(); // by id, once their OPEN has left
  private readonly calls = new Set<Stream>(); // every call running, opened or not (for maxStreams)
  private nextId = 1;
  private connectionWindow = 0;
  private readonly windowWaiters = new Set<Waiter>(); // calls waiting for connection credit
  private readonly slotWaiters: Waiter[] = []; // calls waiting for a stream slot (maxStreams)
  private settingsArrived: Waiter | null = null;

  private constructor(
    private readonly socket: WebSocketLike,
    private readonly streamWindow: number,
  ) {}

  static connect(url: string, options: ConnectOptions = {}): Promise<MuxClient> {
    const Ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) throw new TypeError("no WebSocket class: pass ConnectOptions.WebSocket");
    const socket = new Ctor(url, SUBPROTOCOL);
    socket.binaryType = "arraybuffer";
    const client = new MuxClient(socket, options.streamWindow ?? DEFAULT_WINDOW);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.close();
        reject(new MuxError(Status.UNAVAILABLE, `no connection to ${url} within ${options.connectTimeoutMs ?? 10_000} ms`));
      }, options.connectTimeoutMs ?? 10_000);
      client.settingsArrived = () => {
        clearTimeout(timer);
        resolve(client);
      };
      socket.onopen = () => {
        if (socket.protocol !== SUBPROTOCOL) socket.close(1002, `expected subprotocol ${SUBPROTOCOL}`);
      };
      socket.onerror = () => {}; // the close event that follows says what happened
      socket.onmessage = (event) => client.onMessage(event.data);
      socket.onclose = (event) => {
        clearTimeout(timer);
        client.onClose(event.code, event.reason);
        if (client.settingsArrived) reject(new MuxError(Status.UNAVAILABLE, client.closedReason ?? "closed"));
      };
    });
  }

  /** Close the socket: every call still running ends with CANCELLED (the gateway cancels them upstream). */
  close(): void {
    this.closedReason ??= "closed by the client";
    for (const stream of this.calls) stream.fail(new MuxError(Status.CANCELLED, "the client closed the socket"));
    this.socket.close(1000);
  }

  /** Calls open on this socket now. */
  get activeCalls(): number {
    return this.calls.size;
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
    await this.slot(signal);
    const [stream, open] = this.open(method.path, options);
    this.calls.add(stream);
    const abort = () => this.cancel(stream, new MuxError(Status.CANCELLED, "the call was aborted"));
    signal?.addEventListener("abort", abort);
    const timer =
      timeoutMs !== undefined
        ? setTimeout(() => this.cancel(stream, new MuxError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")), timeoutMs + 50)
        : undefined; // a little after the gateway's own deadline, whose status is the one to report
    // Not awaited at the end: a request iterable may wait for something that never comes once the
    // call is over; whatever it yields then is dropped.
    void this.sendAll(stream, open, method, requests);
    try {
      while (true) {
        const next = stream.replies.shift();
        if (next !== undefined) {
          this.consumed(stream, next.length + 5);
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
      this.forget(stream);
    }
  }

  /** A stream for the call, and its OPEN payload (sent with the first request bytes). */
  private open(path: string, options: CallOptions): [Stream, Uint8Array] {
    if (this.closedReason !== null) throw new MuxError(Status.UNAVAILABLE, this.closedReason);
    const { streamWindow, maxMessageBytes } = this.settings;
    const stream = new Stream(this.streamWindow, streamWindow, maxMessageBytes, options);
    const pathBytes = encoder.encode(path);
    const block = encoder.encode(metadataBlock(options.metadata));
    const payload = new Uint8Array(10 + pathBytes.length + block.length);
    const view = new DataView(payload.buffer);
    view.setUint32(0, stream.window);
    view.setUint32(4, options.timeoutMs !== undefined ? Math.max(1, Math.ceil(options.timeoutMs)) : 0);
    view.setUint16(8, pathBytes.length);
    payload.set(pathBytes, 10);
    payload.set(block, 10 + pathBytes.length);
    return [stream, payload];
  }

  private async sendAll<I, O>(
    stream: Stream,
    open: Uint8Array,
    method: Method<I, O>,
    requests: AsyncIterable<I> | Iterable<I>,
  ): Promise<void> {
    try {
      // The OPEN leaves with the first message (and, for an array, with all that fit): one
      // WebSocket message for a whole unary call.
      let frames: Array<[number, Uint8Array | undefined]> = [[Frame.OPEN, open]];
      const flush = () => {
        if (frames.length && !stream.ended && this.closedReason === null) {
          if (stream.id === 0) {
            stream.id = this.nextId++;
            this.streams.set(stream.id, stream);
          }
          this.socket.send(concat(frames.map(([type, payload]) => frame(type, stream.id, payload))));
        }
        frames = [];
      };
      const send = async (message: I) => {
        const bytes = method.serialize(message);
        if (bytes.length > this.settings.maxMessageBytes) {
          throw new MuxError(Status.RESOURCE_EXHAUSTED, `a request of ${bytes.length} bytes is over the limit`);
        }
        let data = grpcFrame(bytes);
        while (data.length && !stream.ended) {
          const size = Math.min(data.length, stream.sendWindow, this.connectionWindow, this.settings.maxFrameBytes);
          if (size === 0) {
            flush();
            await this.credit(stream);
            continue;
          }
          frames.push([Frame.DATA, data.subarray(0, size)]);
          stream.sendWindow -= size;
          this.connectionWindow -= size;
          data = data.subarray(size);
        }
      };
      if (Symbol.iterator in requests) {
        for (const message of requests) {
          if (stream.ended) return;
          await send(message);
        }
      } else {
        for await (const message of requests) {
          if (stream.ended) return;
          await send(message);
          flush(); // a streamed message leaves at once
        }
      }
      frames.push([Frame.HALF_CLOSE, undefined]);
      flush();
    } catch (error) {
      const failure =
        error instanceof MuxError ? error : new MuxError(Status.CANCELLED, `the request stream failed: ${String(error)}`);
      this.cancel(stream, failure);
    }
  }

  private async slot(signal: AbortSignal | undefined): Promise<void> {
    while (this.calls.size >= this.settings.maxStreams && this.closedReason === null) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
      if (signal?.aborted) throw new MuxError(Status.CANCELLED, "aborted while waiting for a stream");
    }
  }

  private credit(stream: Stream): Promise<void> {
    return new Promise((resolve) => {
      this.windowWaiters.add(resolve);
      void stream.changed().then(resolve);
    });
  }

  private consumed(stream: Stream, size: number): void {
    stream.owed += size;
    if (!stream.ended && stream.owed >= stream.window / 2) {
      const increment = new Uint8Array(4);
      new DataView(increment.buffer).setUint32(0, stream.owed);
      this.socket.send(frame(Frame.WINDOW_UPDATE, stream.id, increment));
      stream.owed = 0;
    }
  }

  private cancel(stream: Stream, error: MuxError): void {
    if (stream.ended) return;
    stream.fail(error);
    if (stream.id !== 0 && this.closedReason === null) this.socket.send(frame(Frame.CANCEL, stream.id));
  }

  private forget(stream: Stream): void {
    // The gateway counts a stream against maxStreams until its TRAILERS, which a cancelled call
    // still gets: until they come, it keeps its slot here too.
    if (stream.id !== 0 && !stream.closed && this.closedReason === null) return;
    this.streams.delete(stream.id);
    if (this.calls.delete(stream)) this.slotWaiters.shift()?.();
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
        this.connectionWindow = this.settings.connectionWindow;
        const arrived = this.settingsArrived;
        this.settingsArrived = null;
        arrived?.();
      } else if (type === Frame.WINDOW_UPDATE) {
        this.connectionWindow += view.getUint32(0);
        const waiting = [...this.windowWaiters];
        this.windowWaiters.clear();
        for (const resolve of waiting) resolve();
      } else if (type === Frame.GOAWAY) {
        const reason = decoder.decode(payload.subarray(6));
        this.closedReason = `the gateway is going away: ${reason}`;
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
    if (type === Frame.HEADERS) {
      stream.headers = parseBlock(payload);
      stream.options.onHeader?.(stream.headers);
    } else if (type === Frame.DATA) {
      const error = stream.onData(payload);
      if (error) this.cancel(stream, error);
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

  private onClose(code: number, reason: string): void {
    this.closedReason = `the socket closed (${code}${reason ? `: ${reason}` : ""})`;
    const error = new MuxError(code === 1000 ? Status.CANCELLED : Status.UNAVAILABLE, this.closedReason);
    for (const stream of this.calls) stream.fail(error);
    this.streams.clear();
    for (const resolve of this.slotWaiters.splice(0)) resolve();
    for (const resolve of this.windowWaiters) resolve();
    this.windowWaiters.clear();
  }
}
