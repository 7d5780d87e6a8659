// An asynchronous boundary: shared modules (react, the SDK) are negotiated by the federation runtime
// before the first import of them runs.
import("./bootstrap");
