/**
 * KernelLink: the sidebar's connection to one notebook's kernel over the `ryzjupyter` comm.
 *
 * It follows the session (kernel changes, restarts, death), bootstraps the comm (imports
 * ryzjupyter silently when the kernel has not), matches replies to requests by id, and forwards
 * the kernel's pushes (progress, stats, state changes).
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export const TARGET = 'ryzjupyter';
export const BOOTSTRAP =
  'import ryzjupyter.jupyter.comm as _ryz_comm\n_ryz_comm.register()\ndel _ryz_comm';

/** Where the link stands. */
export type LinkState =
  | 'no-kernel' // the notebook has no kernel
  | 'connecting' // opening the comm / importing the package
  | 'waiting-busy' // the import has to wait for the running cell
  | 'ready' // the comm is open
  | 'restarting' // the kernel is restarting
  | 'dead' // the kernel died
  | 'missing' // ryzjupyter is not importable in the kernel's environment
  | 'error'; // something else failed (message in `error`)

/** A reply from the kernel: {id, ok, ...} */
export interface IReply {
  id: number;
  ok: boolean;
  error?: string;
  [key: string]: any;
}

/** A message pushed by the kernel: {push: 'hello' | 'state' | 'progress' | 'stats' | 'generation', ...} */
export interface IPush {
  push: string;
  [key: string]: any;
}

export interface ILinkOptions {
  autoImport: boolean;
}

interface IPending {
  resolve: (r: IReply) => void;
  timer: number;
}

export class KernelLink {
  constructor(session: ISessionContext, options: ILinkOptions) {
    this.session = session;
    this._options = options;
    session.statusChanged.connect(this._onStatus, this);
    session.kernelChanged.connect(this._onKernelChanged, this);
  }

  readonly session: ISessionContext;

  get state(): LinkState {
    return this._state;
  }
  get error(): string {
    return this._error;
  }
  /** The kernel's own status: idle, busy, restarting, ... */
  get kernelStatus(): string {
    return this.session.session?.kernel?.status ?? 'unknown';
  }
  get stateChanged(): ISignal<this, LinkState> {
    return this._stateChanged;
  }
  get pushed(): ISignal<this, IPush> {
    return this._pushed;
  }
  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Connect (or reconnect) to the session's current kernel. */
  async connect(): Promise<void> {
    const generation = ++this._generation;
    this._closeComm();
    await this.session.ready;
    if (generation !== this._generation || this._disposed) {
      return;
    }
    const kernel = this.session.session?.kernel;
    if (!kernel) {
      this._setState('no-kernel');
      return;
    }
    if (kernel.status === 'restarting' || kernel.status === 'autorestarting') {
      this._setState('restarting');
      return;
    }
    if (kernel.status === 'dead') {
      this._setState('dead');
      return;
    }
    this._setState('connecting');
    try {
      if (await this._open(kernel, generation, 2500)) {
        return;
      }
      if (generation !== this._generation) {
        return;
      }
      if (!this._options.autoImport) {
        this._fail('missing', 'ryzjupyter is not imported in this kernel (run `import ryzjupyter.jupyter.comm; ryzjupyter.jupyter.comm.register()` or `%load_ext ryzjupyter`)');
        return;
      }
      // the silent import waits for a running cell: say so
      if (kernel.status === 'busy') {
        this._setState('waiting-busy');
      }
      const reply = await this._bootstrap(kernel);
      if (generation !== this._generation) {
        return;
      }
      if (reply.status !== 'ok') {
        const r = reply as KernelMessage.IReplyErrorContent;
        if (r.ename === 'ModuleNotFoundError' || r.ename === 'ImportError') {
          this._fail('missing', `ryzjupyter is not installed in this kernel's environment (${r.ename}: ${r.evalue})`);
        } else {
          this._fail('error', `importing ryzjupyter failed: ${r.ename}: ${r.evalue}`);
        }
        return;
      }
      this._setState('connecting');
      if (!(await this._open(kernel, generation, 10000))) {
        if (generation === this._generation) {
          this._fail('error', 'the kernel did not answer on the ryzjupyter comm');
        }
      }
    } catch (e) {
      if (generation === this._generation) {
        this._fail('error', String(e));
      }
    }
  }

  /** Send a request; resolves with the reply (ok false on timeout or disconnect). */
  request(op: string, args: { [key: string]: any } = {}, timeoutMs = 30000): Promise<IReply> {
    const comm = this._comm;
    const id = this._nextId++;
    if (!comm || this._state !== 'ready') {
      return Promise.resolve({ id, ok: false, error: 'not connected to the kernel' });
    }
    return new Promise<IReply>(resolve => {
      const timer = window.setTimeout(() => {
        this._pending.delete(id);
        resolve({ id, ok: false, error: `no reply to ${op} after ${timeoutMs / 1000} s` });
      }, timeoutMs);
      this._pending.set(id, { resolve, timer });
      try {
        comm.send({ id, op, ...args });
      } catch (e) {
        window.clearTimeout(timer);
        this._pending.delete(id);
        resolve({ id, ok: false, error: String(e) });
      }
    });
  }

  /** Interrupt the kernel (the same as the toolbar's stop button). */
  async interrupt(): Promise<void> {
    await this.session.session?.kernel?.interrupt();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._generation++;
    this._closeComm();
    this.session.statusChanged.disconnect(this._onStatus, this);
    this.session.kernelChanged.disconnect(this._onKernelChanged, this);
    Signal.clearData(this);
  }

  // -- internals
  private _open(kernel: Kernel.IKernelConnection, generation: number, timeoutMs: number): Promise<boolean> {
    return new Promise<boolean>(resolve => {
      let settled = false;
      const done = (ok: boolean) => {
        if (!settled) {
          settled = true;
          window.clearTimeout(timer);
          resolve(ok);
        }
      };
      const comm = kernel.createComm(TARGET);
      this._comm = comm;
      comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
        if (generation !== this._generation) {
          return;
        }
        const data = msg.content.data as any;
        if (data && typeof data.push === 'string') {
          if (data.push === 'hello') {
            this._setState('ready');
            done(true);
          }
          this._pushed.emit(data as IPush);
        } else if (data && this._pending.has(data.id)) {
          const p = this._pending.get(data.id)!;
          this._pending.delete(data.id);
          window.clearTimeout(p.timer);
          p.resolve(data as IReply);
        }
      };
      comm.onClose = () => {
        if (this._comm === comm) {
          this._comm = null;
          this._rejectPending('the comm was closed');
          if (settled && generation === this._generation && this._state === 'ready') {
            // closed by the kernel after it was open: reconnect
            void this.connect();
          }
        }
        done(false);
      };
      const timer = window.setTimeout(() => done(false), timeoutMs);
      try {
        comm.open({ client: 'ryzjupyter-sidebar' });
      } catch (e) {
        done(false);
      }
    }).then(ok => {
      if (!ok && this._comm) {
        this._closeComm();
      }
      return ok;
    });
  }

  private async _bootstrap(kernel: Kernel.IKernelConnection): Promise<KernelMessage.IExecuteReplyMsg['content']> {
    const future = kernel.requestExecute(
      { code: BOOTSTRAP, silent: true, store_history: false, stop_on_error: false, allow_stdin: false },
      true
    );
    const reply = await future.done;
    return reply.content;
  }

  private _closeComm(): void {
    const comm = this._comm;
    this._comm = null;
    this._rejectPending('disconnected');
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch (e) {
        // the kernel may be gone already
      }
    }
  }

  private _rejectPending(error: string): void {
    for (const [id, p] of this._pending) {
      window.clearTimeout(p.timer);
      p.resolve({ id, ok: false, error });
    }
    this._pending.clear();
  }

  private _onStatus(_: ISessionContext, status: Kernel.Status): void {
    if (
      status === 'restarting' ||
      status === 'autorestarting' ||
      (status === 'starting' && this._state === 'ready')
    ) {
      this._generation++;
      this._closeComm();
      this._setState('restarting');
    } else if (status === 'dead') {
      this._generation++;
      this._closeComm();
      this._setState('dead');
    } else if (status === 'idle' && (this._state === 'restarting' || this._state === 'dead')) {
      void this.connect();
    } else {
      this._stateChanged.emit(this._state); // busy/idle: let the panel show it
    }
  }

  private _onKernelChanged(): void {
    void this.connect();
  }

  private _fail(state: LinkState, error: string): void {
    this._error = error;
    this._setState(state);
  }

  private _setState(state: LinkState): void {
    if (state !== 'error' && state !== 'missing') {
      this._error = '';
    }
    this._state = state;
    this._stateChanged.emit(state);
  }

  private _options: ILinkOptions;
  private _state: LinkState = 'connecting';
  private _error = '';
  private _comm: Kernel.IComm | null = null;
  private _nextId = 1;
  private _generation = 0;
  private _pending = new Map<number, IPending>();
  private _disposed = false;
  private _stateChanged = new Signal<this, LinkState>(this);
  private _pushed = new Signal<this, IPush>(this);
}
