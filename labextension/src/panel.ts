/**
 * The ryzjupyter sidebar panel: the models of the active notebook's kernel.
 *
 * Sections: connection state, memory (used / budget), loaded models (use, unload), available
 * models (load, with their memory estimate), load progress, the running generation (live tokens/s,
 * stop), the last generation's stats and profile breakdown, the OpenAI server of %ryz serve
 * (its URL and traffic) while one runs, and the memory bank of recycled semantic units (%ryz
 * memory: namespace, count, the newest units, a search box), through the comm's `memory` op.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { IPush, IReply, KernelLink, LinkState } from './connection';

export interface IPanelOptions {
  autoImport: boolean;
  stopInterruptsAfterMs: number;
}

interface IUnit {
  id: string;
  text: string;
  source: string;
  time: number;
  uses: number;
  score: number;
}

interface IModelRow {
  name: string;
  source: string;
  loaded: boolean;
  current: boolean;
  busy: boolean;
  family: string;
  memory_bytes: number;
  memory: string;
  variant?: string;
  params?: number;
  weights_bytes?: number;
}

const STATE_TEXT: { [k in LinkState]: string } = {
  'no-kernel': 'This notebook has no kernel. Start one (Kernel ▸ Change Kernel…) to load models.',
  connecting: 'Connecting to the kernel…',
  'waiting-busy': 'The kernel is busy: the sidebar connects when the running cell finishes.',
  ready: '',
  restarting: 'The kernel is restarting: its models are gone. The sidebar reconnects when it is back.',
  dead: 'The kernel is dead. Restart it to use the sidebar.',
  missing: 'ryzjupyter is not installed in this kernel’s environment.',
  error: 'The sidebar could not talk to the kernel.'
};

export function formatBytes(n: number): string {
  if (!n || n < 0) {
    return '0 B';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) {
    e.className = cls;
  }
  if (text) {
    e.textContent = text;
  }
  return e;
}

export class RyzSidebar extends Widget {
  constructor(options: IPanelOptions) {
    super();
    this._options = options;
    this.addClass('ryz-Sidebar');
    this.title.caption = 'ryzjupyter: models in this kernel';
    this.title.label = '';
    const n = this.node;
    const header = el('div', 'ryz-header');
    header.append(el('span', 'ryz-title', 'ryzjupyter models'));
    this._kernelBadge = el('span', 'ryz-kernel-badge');
    header.append(this._kernelBadge);
    this._notebookLabel = el('div', 'ryz-notebook');
    this._stateBox = el('div', 'ryz-state');
    this._errorBox = el('div', 'ryz-error');
    this._body = el('div', 'ryz-body');
    this._bankBox = this._makeBankBox();
    n.append(header, this._notebookLabel, this._stateBox, this._errorBox, this._body, this._bankBox);
    this._render();
  }

  /** Follow a notebook (or none). */
  setNotebook(panel: NotebookPanel | null): void {
    if (panel === this._notebook) {
      return;
    }
    this._notebook = panel;
    if (this._link) {
      this._link.dispose();
      this._link = null;
    }
    this._models = [];
    this._state = null;
    this._live = null;
    this._last = null;
    this._progress = null;
    this._spark = [];
    this._error = '';
    this._bank = null;
    this._bankUnits = [];
    this._bankHits = null;
    this._bankError = '';
    if (panel) {
      const link = new KernelLink(panel.sessionContext, { autoImport: this._options.autoImport });
      this._link = link;
      link.stateChanged.connect(this._onLinkState, this);
      link.pushed.connect(this._onPush, this);
      panel.disposed.connect(() => {
        if (this._notebook === panel) {
          this.setNotebook(null);
        }
      });
      void link.connect();
    }
    this._render();
  }

  get link(): KernelLink | null {
    return this._link;
  }

  // -- actions
  async refresh(): Promise<void> {
    if (!this._link || this._link.state !== 'ready') {
      return;
    }
    const r = await this._link.request('list');
    if (r.ok) {
      this._models = r.models as IModelRow[];
      this._state = r.state;
      this._server = r.state?.server ?? null;
      this._last = r.state?.last ?? this._last;
    } else {
      this._error = r.error ?? 'list failed';
    }
    this._render();
  }

  /** The memory bank: `status` (opens nothing) unless `action` is open or search. */
  async refreshBank(action = 'status', query = ''): Promise<void> {
    const link = this._link;
    if (!link || link.state !== 'ready') {
      return;
    }
    const args: { [k: string]: any } = { action, limit: 20 };
    if (action === 'search') {
      args.query = query;
      args.k = 5;
    }
    this._bankPending = action === 'status' ? '' : action === 'open' ? 'opening the bank…' : 'searching…';
    this._renderBank();
    const r = await link.request('memory', args, 120000);
    if (this._link !== link) {
      return;
    }
    this._bankPending = '';
    if (r.ok) {
      this._bank = r.memory;
      this._bankUnits = (r.units as IUnit[]) ?? [];
      this._bankError = '';
      if (action === 'search') {
        this._bankHits = (r.hits as IUnit[]) ?? [];
        this._bankQuery = query;
      }
    } else {
      this._bankError = r.error ?? 'memory failed';
    }
    this._renderBank();
  }

  async load(name: string): Promise<void> {
    await this._act('load', { model: name }, 600000);
  }

  async unload(name: string): Promise<void> {
    await this._act('unload', { model: name });
  }

  async use(name: string): Promise<void> {
    await this._act('use', { model: name });
  }

  async stop(): Promise<void> {
    const link = this._link;
    if (!link) {
      return;
    }
    // ask the generation to stop over the comm (answered at once when comms run on a subshell);
    // if it is still running after stopInterruptsAfterMs, interrupt the kernel like the toolbar's stop
    const wait = this._options.stopInterruptsAfterMs;
    if (wait > 0) {
      window.setTimeout(() => {
        if (this._link === link && this._isGenerating()) {
          void link.interrupt();
        }
      }, wait);
    }
    const r = await link.request('stop', {}, 10000);
    if (!r.ok && wait === 0) {
      this._error = r.error ?? 'stop failed';
      this._render();
    }
  }

  private async _act(op: string, args: { [k: string]: any }, timeoutMs = 60000): Promise<IReply | null> {
    if (!this._link) {
      return null;
    }
    this._error = '';
    this._pendingOp = `${op} ${args.model ?? ''}`.trim();
    this._render();
    const r = await this._link.request(op, args, timeoutMs);
    this._pendingOp = '';
    if (!r.ok) {
      this._error = r.error ?? `${op} failed`;
    }
    if (r.state) {
      this._state = r.state;
    }
    this._render();
    await this.refresh();
    return r;
  }

  // -- events
  private _onLinkState(_: KernelLink, state: LinkState): void {
    if (state === 'ready' && this._lastLinkState !== 'ready') {
      this._connections++;
      void this.refresh();
      void this.refreshBank();
    }
    if (state === 'restarting' && this._lastLinkState !== 'restarting') {
      this._restarts++;
    }
    if (state === 'restarting' || state === 'dead') {
      this._models = [];
      this._state = null;
      this._live = null;
      this._progress = null;
      this._server = null;
      this._bank = null;
      this._bankUnits = [];
      this._bankHits = null;
    }
    this._lastLinkState = state;
    this._render();
  }

  private _onPush(_: KernelLink, p: IPush): void {
    switch (p.push) {
      case 'hello':
      case 'state':
        this._state = p.state;
        this._server = p.state?.server ?? null;
        this._applyState(p.state);
        this._scheduleRefresh();
        break;
      case 'progress':
        this._progress = p.finished ? null : p;
        if (p.error) {
          this._error = `loading ${p.name} failed: ${p.error}`;
        }
        break;
      case 'stats':
        if (p.live) {
          this._live = p.live;
          this._spark.push(p.live.tok_s ?? 0);
          if (this._spark.length > 60) {
            this._spark.shift();
          }
        }
        if (p.last) {
          this._last = p.last;
        }
        break;
      case 'server':
        this._server = p.server ?? null;
        break;
      case 'memory':
        // the bank was opened by a cell, or its units changed: ask for them (once per burst)
        if (!this._bankTimer) {
          this._bankTimer = window.setTimeout(() => {
            this._bankTimer = 0;
            void this.refreshBank();
          }, 200);
        }
        break;
      case 'generation':
        this._state = p.state;
        this._applyState(p.state);
        if (p.running) {
          this._spark = [];
          this._live = { model: p.model, running: true, tokens: 0, tok_s: 0 };
        } else {
          this._live = null;
          if (p.last) {
            this._last = p.last;
          }
          void this.refreshBank(); // the cell may have opened the bank or added units
        }
        this._scheduleRefresh();
        break;
    }
    this._render();
  }

  /** Apply a pushed state snapshot to the model rows at once (the full list follows). */
  private _applyState(state: any): void {
    if (!state || !Array.isArray(state.loaded)) {
      return;
    }
    const byName = new Map<string, any>(state.loaded.map((m: any) => [m.name, m]));
    for (const m of this._models) {
      const s = byName.get(m.name);
      if (m.loaded && s) {
        m.busy = !!s.busy;
        m.current = !!s.current;
      }
    }
  }

  private _scheduleRefresh(): void {
    if (this._refreshTimer) {
      return;
    }
    this._refreshTimer = window.setTimeout(() => {
      this._refreshTimer = 0;
      void this.refresh();
    }, 150);
  }

  private _isGenerating(): boolean {
    return !!(this._state?.generating?.length || this._live?.running);
  }

  // -- rendering
  private _render(): void {
    const link = this._link;
    const nb = this._notebook;
    this._notebookLabel.textContent = nb ? `Notebook: ${nb.context.path}` : '';
    // with comms on subshells, a subshell's idle status can hide the main shell's busy one:
    // a running generation counts as busy whatever the last status message said
    const generating = this._isGenerating();
    const ks = link ? (generating && link.state === 'ready' ? 'busy' : link.kernelStatus) : '';
    this._kernelBadge.textContent = nb ? (generating ? 'kernel generating' : `kernel ${ks}`) : '';
    this._kernelBadge.dataset.status = ks;

    let stateText: string;
    let stateKind: string;
    if (!nb || !link) {
      stateText = 'Open a notebook to see and manage the models in its kernel.';
      stateKind = 'no-notebook';
    } else {
      stateKind = link.state;
      stateText = STATE_TEXT[link.state];
      if (link.state === 'missing') {
        stateText += ' Install it there (pip install ryzjupyter) or pick a kernel that has it.';
      }
      if (link.state === 'ready' && ks === 'busy') {
        stateKind = 'busy';
        stateText = this._isGenerating()
          ? 'The kernel is generating. Models cannot be swapped or unloaded until it ends; stop it below.'
          : 'The kernel is busy running a cell; requests are answered on a subshell when possible.';
      }
    }
    this.node.dataset.state = stateKind;
    this.node.dataset.connections = String(this._connections); // how often the comm was (re)opened
    this.node.dataset.restarts = String(this._restarts); // kernel restarts seen
    this._stateBox.textContent = stateText;
    this._stateBox.dataset.kind = stateKind;
    this._stateBox.style.display = stateText ? '' : 'none';
    const err = this._error || (link && (link.state === 'error' || link.state === 'missing') ? link.error : '');
    this._errorBox.textContent = err;
    this._errorBox.style.display = err ? '' : 'none';

    const body = this._body;
    body.textContent = '';
    this._renderBank();
    if (!link || link.state !== 'ready') {
      return;
    }
    const st = this._state || {};

    // current + memory
    const cur = el('div', 'ryz-current-line');
    cur.append(el('span', 'ryz-label', 'Current model: '));
    cur.append(el('span', 'ryz-current', st.current ?? 'none'));
    body.append(cur);
    if (st.memory) {
      const mem = el('div', 'ryz-memory');
      const used = st.memory.used || 0;
      const budget = st.memory.budget || 1;
      mem.append(el('span', 'ryz-label', `Memory: ${formatBytes(used)} of ${formatBytes(budget)} budget`));
      const bar = el('div', 'ryz-bar');
      const fill = el('div', 'ryz-bar-fill');
      fill.style.width = `${Math.min(100, (100 * used) / budget).toFixed(1)}%`;
      bar.append(fill);
      mem.append(bar);
      body.append(mem);
    }
    if (this._pendingOp) {
      body.append(el('div', 'ryz-pending', `Working: ${this._pendingOp}…`));
    }
    if (this._progress) {
      const p = this._progress;
      const box = el('div', 'ryz-progress');
      box.append(el('span', 'ryz-label', `Loading ${p.name}: ${Math.round((p.fraction || 0) * 100)}%`));
      const bar = el('div', 'ryz-bar');
      const fill = el('div', 'ryz-bar-fill');
      fill.style.width = `${Math.round((p.fraction || 0) * 100)}%`;
      bar.append(fill);
      box.append(bar);
      body.append(box);
    }

    // generation
    const gen = el('div', 'ryz-section ryz-generation');
    gen.append(el('h3', '', 'Generation'));
    const running = this._isGenerating();
    const live = el('div', 'ryz-live');
    if (running && this._live) {
      // tokens/s needs two tokens; before that, say how long the first one took
      const n = this._live.tokens || 0;
      const speed =
        n > 1 && this._live.tok_s > 0
          ? `${this._live.tok_s.toFixed(1)} tok/s`
          : n === 1 && this._live.ttft_s !== undefined
            ? `first token after ${(this._live.ttft_s * 1000).toFixed(0)} ms`
            : 'starting…';
      live.append(el('span', 'ryz-tps', speed));
      live.append(el('span', 'ryz-live-tokens', ` · ${plural(n, 'token')} · ${this._live.model ?? ''}`));
    } else {
      live.append(el('span', 'ryz-idle', 'No generation running.'));
    }
    gen.append(live);
    if (this._spark.length > 1) {
      gen.append(this._sparkline());
    }
    const stop = el('button', 'ryz-button ryz-stop jp-mod-styled', 'Stop');
    stop.disabled = !running;
    stop.title = 'Stop the running generation (keeps the partial answer)';
    stop.onclick = () => void this.stop();
    gen.append(stop);
    body.append(gen);

    if (this._server) {
      body.append(this._serverSection(this._server));
    }

    // last generation: stats + profile
    if (this._last && this._last.stats) {
      const last = el('div', 'ryz-section ryz-last');
      last.append(el('h3', '', `Last generation${this._last.model ? ` (${this._last.model})` : ''}`));
      const s = this._last.stats;
      const dl = el('div', 'ryz-stats');
      const add = (k: string, v: string) => {
        const row = el('div', 'ryz-stat');
        row.append(el('span', 'ryz-stat-key', k), el('span', 'ryz-stat-value', v));
        dl.append(row);
      };
      add('tokens', `${s.n_generated ?? this._last.tokens ?? 0} (prompt ${s.n_prompt ?? 0}, cached ${s.n_cached ?? 0})`);
      if ((s.n_generated ?? 0) < 2) {
        // decode speed needs two tokens
        s.decode_tok_s = undefined;
      }
      add('decode', s.decode_tok_s === undefined ? '–' : `${s.decode_tok_s.toFixed(1)} tok/s`);
      add('prefill', `${(s.prefill_tok_s ?? 0).toFixed(1)} tok/s`);
      add('time to first token', `${((s.ttft_s ?? 0) * 1000).toFixed(0)} ms`);
      if (s.drafter) {
        // speculative decoding: how many drafts the model kept, and where the decode time went
        const pct = Math.round(100 * (s.acceptance ?? 0));
        add('speculative', `${s.drafter}: ${s.accepted ?? 0}/${s.drafted ?? 0} drafts accepted (${pct}%), ` +
          `${(s.tokens_per_pass ?? 0).toFixed(2)} tokens/pass`);
        dl.lastElementChild?.classList.add('ryz-speculative');
        const ms = (v: number | undefined) => `${((v ?? 0) * 1000).toFixed(0)} ms`;
        add('draft / verify / sampling', `${ms(s.draft_s)} / ${ms(s.verify_s)} / ${ms(s.sampling_s)}`);
      }
      // why it stopped: max tokens, context full, a stop token or string, interrupted
      const finish = this._last.finish;
      add('stopped', finish?.label ?? String(this._last.finish_reason ?? ''));
      dl.lastElementChild?.classList.add('ryz-finish');
      if (finish?.reason) {
        (dl.lastElementChild as HTMLElement).dataset.reason = finish.reason;
      }
      last.append(dl);
      const prof = this._last.profile || {};
      const total = Object.values(prof).reduce((a: number, b: any) => a + Number(b), 0) as number;
      if (total > 0) {
        const pbox = el('div', 'ryz-profile');
        pbox.append(el('div', 'ryz-label', 'Where the time went'));
        for (const [k, v] of Object.entries(prof)) {
          const row = el('div', 'ryz-profile-row');
          const pct = (100 * Number(v)) / total;
          row.append(el('span', 'ryz-profile-key', k));
          const bar = el('div', 'ryz-bar');
          const fill = el('div', 'ryz-bar-fill');
          fill.style.width = `${pct.toFixed(1)}%`;
          bar.append(fill);
          row.append(bar, el('span', 'ryz-profile-value', `${(Number(v) * 1000).toFixed(0)} ms`));
          pbox.append(row);
        }
        last.append(pbox);
      }
      body.append(last);
    }

    // models: the loaded ones from the kernel's latest state (pushed with every change, so they
    // agree with "Current model" even while a list request waits), the others from the last list
    const loaded = this._loadedRows();
    const loadedNames = new Set(loaded.map(m => m.name));
    const loadedSources = new Set(loaded.map(m => m.source));
    const avail = this._models.filter(m => !m.loaded && !loadedNames.has(m.name) && !loadedSources.has(m.source));
    const ls = el('div', 'ryz-section ryz-loaded');
    ls.append(el('h3', '', `Loaded (${loaded.length})`));
    if (!loaded.length) {
      ls.append(el('div', 'ryz-empty', 'No model loaded. Load one below, or with %ryz load in a cell.'));
    }
    for (const m of loaded) {
      const row = this._row(m);
      if (!m.current) {
        const use = el('button', 'ryz-button ryz-use jp-mod-styled', 'Use');
        use.title = `Make ${m.name} the current model (no reload)`;
        use.disabled = running;
        use.onclick = () => void this.use(m.name);
        row.append(use);
      }
      const un = el('button', 'ryz-button ryz-unload jp-mod-styled', 'Unload');
      un.disabled = m.busy;
      un.onclick = () => void this.unload(m.name);
      row.append(un);
      ls.append(row);
    }
    body.append(ls);

    const as = el('div', 'ryz-section ryz-available');
    as.append(el('h3', '', `Available (${avail.length})`));
    if (!avail.length) {
      as.append(el('div', 'ryz-empty', 'No other model found (bundled, registered or in $RYZ_MODEL_DIRS).'));
    }
    for (const m of avail) {
      const row = this._row(m);
      const ld = el('button', 'ryz-button ryz-load jp-mod-styled', 'Load');
      ld.title = `Load ${m.name} (estimated to need ${formatBytes(m.memory_bytes)}: weights + KV cache reserve)`;
      ld.disabled = !!this._progress;
      ld.onclick = () => void this.load(m.name);
      row.append(ld);
      as.append(row);
    }
    body.append(as);
    const rf = el('button', 'ryz-button ryz-refresh jp-mod-styled', 'Refresh');
    rf.onclick = () => {
      void this.refresh();
      void this.refreshBank();
    };
    body.append(rf);
  }

  /** The loaded models as rows: the pushed state's list, else the last list reply's. */
  /** The OpenAI server of %ryz serve: where it listens and its traffic (pushed ~4 times a second). */
  private _serverSection(sv: any): HTMLDivElement {
    const box = el('div', 'ryz-section ryz-server');
    box.append(el('h3', '', 'OpenAI server'));
    const url = el('div', 'ryz-server-url');
    url.append(el('span', 'ryz-label', 'URL: '), el('code', '', sv.url ?? ''));
    box.append(url);
    const dl = el('div', 'ryz-stats');
    const add = (k: string, v: string, cls = '') => {
      const row = el('div', `ryz-stat ${cls}`.trim());
      row.append(el('span', 'ryz-stat-key', k), el('span', 'ryz-stat-value', v));
      dl.append(row);
    };
    const ms = (x: number | null | undefined) => (x === null || x === undefined ? '–' : `${(x * 1000).toFixed(0)} ms`);
    add('models', (sv.models || []).join(', ') || 'none');
    add('key', sv.auth ? 'required' : 'none (127.0.0.1 only)');
    add('requests', `${sv.requests ?? 0} (${sv.in_flight ?? 0} now, ${sv.errors ?? 0} errors)`, 'ryz-server-requests');
    add('streams', `${sv.streams ?? 0} decoding together, ${sv.queued ?? 0} waiting`, 'ryz-server-streams');
    add('decode', `${(sv.tok_s ?? 0).toFixed(1)} tok/s`);
    add('tokens', `${sv.completion_tokens ?? 0} generated`);
    add('time to first token', `p50 ${ms(sv.ttft_p50_s)} · p99 ${ms(sv.ttft_p99_s)}`);
    box.append(dl);
    box.append(el('div', 'ryz-hint', '%ryz serve stop ends it; the stop button above also cancels its generations.'));
    return box;
  }

  private _loadedRows(): IModelRow[] {
    const st = this._state;
    if (!st || !Array.isArray(st.loaded)) {
      return this._models.filter(m => m.loaded);
    }
    return st.loaded.map((i: any) => ({
      name: i.name,
      source: i.source,
      loaded: true,
      current: !!i.current,
      busy: !!i.busy,
      family: i.family,
      memory_bytes: i.nbytes,
      weights_bytes: i.weights_bytes,
      memory: formatBytes(i.nbytes)
    }));
  }

  /** What a row's memory figure is: loaded, weights + KV cache reserve; available, an estimate. */
  private _memoryText(m: IModelRow): string {
    if (!m.loaded) {
      return `needs ~${formatBytes(m.memory_bytes)} (estimate)`;
    }
    const w = m.weights_bytes ?? 0;
    if (w > 0 && m.memory_bytes > w) {
      return `${formatBytes(m.memory_bytes)} = ${formatBytes(w)} weights + ${formatBytes(m.memory_bytes - w)} KV cache`;
    }
    return formatBytes(m.memory_bytes);
  }

  private _row(m: IModelRow): HTMLDivElement {
    const row = el('div', 'ryz-model-row');
    row.dataset.name = m.name;
    if (m.current) {
      row.classList.add('ryz-mod-current');
    }
    if (m.busy) {
      row.classList.add('ryz-mod-busy');
    }
    const info = el('div', 'ryz-model-info');
    info.append(el('span', 'ryz-model-name', m.name));
    const details = [m.family, m.variant, this._memoryText(m)].filter(Boolean).join(' · ');
    info.append(el('span', 'ryz-model-details', details + (m.busy ? ' · generating' : '')));
    info.title = m.source;
    row.append(info);
    return row;
  }

  private _sparkline(): HTMLElement {
    const w = 200;
    const h = 32;
    const canvas = el('canvas', 'ryz-spark');
    canvas.width = w;
    canvas.height = h;
    const pts = this._spark;
    const ctx = canvas.getContext('2d');
    if (ctx && pts.length > 1) {
      const max = Math.max(...pts, 1);
      ctx.strokeStyle = getComputedStyle(this.node).getPropertyValue('--jp-brand-color1') || '#1976d2';
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      pts.forEach((v, i) => {
        const x = (i / (pts.length - 1)) * (w - 2) + 1;
        const y = h - 1 - (v / max) * (h - 2);
        if (i === 0) {
          ctx.moveTo(x, y);
        } else {
          ctx.lineTo(x, y);
        }
      });
      ctx.stroke();
    }
    return canvas;
  }

  /** The Memory section's frame: built once, so the search box keeps its text and focus. */
  private _makeBankBox(): HTMLDivElement {
    const box = el('div', 'ryz-section ryz-bank');
    box.append(el('h3', '', 'Memory'));
    this._bankInfo = el('div', 'ryz-bank-info');
    this._bankOpen = el('button', 'ryz-button ryz-bank-open jp-mod-styled', 'Open the bank');
    this._bankOpen.title = 'Open the memory bank of %ryz memory in this kernel (loads the embedder)';
    this._bankOpen.onclick = () => void this.refreshBank('open');
    const form = el('form', 'ryz-bank-form');
    this._bankSearch = el('input', 'ryz-bank-search jp-mod-styled');
    this._bankSearch.type = 'search';
    this._bankSearch.placeholder = 'Search the bank…';
    this._bankSearch.setAttribute('aria-label', 'Search the memory bank');
    const go = el('button', 'ryz-button ryz-bank-go jp-mod-styled', 'Search');
    go.type = 'submit';
    form.append(this._bankSearch, go);
    form.onsubmit = (e: Event) => {
      e.preventDefault();
      const q = this._bankSearch.value.trim();
      if (q) {
        void this.refreshBank('search', q);
      } else {
        this._bankHits = null;
        this._renderBank();
      }
    };
    this._bankForm = form;
    this._bankHitsBox = el('div', 'ryz-bank-hits');
    this._bankUnitsBox = el('div', 'ryz-bank-units');
    box.append(this._bankInfo, this._bankOpen, form, this._bankHitsBox, this._bankUnitsBox);
    return box;
  }

  private _unitRow(u: IUnit, withScore: boolean): HTMLDivElement {
    const row = el('div', 'ryz-unit');
    row.dataset.id = u.id;
    const meta = el('div', 'ryz-unit-meta');
    if (withScore) {
      meta.append(el('span', 'ryz-unit-score', u.score.toFixed(3)));
    }
    meta.append(el('span', 'ryz-unit-source', u.source));
    meta.append(el('span', 'ryz-unit-uses', plural(u.uses, 'use')));
    meta.append(el('span', 'ryz-unit-id', u.id.slice(0, 8)));
    row.append(meta, el('div', 'ryz-unit-text', u.text));
    row.title = `${u.id}\n${u.text}`;
    return row;
  }

  private _renderBank(): void {
    const link = this._link;
    const box = this._bankBox;
    if (!link || link.state !== 'ready') {
      box.style.display = 'none';
      return;
    }
    box.style.display = '';
    const b = this._bank;
    const open = !!b?.open;
    box.dataset.open = String(open);
    let info = '';
    if (this._bankPending) {
      info = `Working: ${this._bankPending}`;
    } else if (b && open) {
      info = `namespace ${b.namespace} · ${plural(b.rsus ?? 0, 'unit')} · ${b.store}`;
    } else if (b && b.magics === false) {
      info = 'The ryzjupyter magics are not loaded in this kernel: %load_ext ryzjupyter, then the bank of %ryz memory shows here.';
    } else if (b) {
      info = `namespace ${b.namespace} · not open in this kernel (${b.store}). %ryz memory, --recycle or the button opens it.`;
    }
    this._bankInfo.textContent = info;
    if (this._bankError) {
      const err = el('div', 'ryz-bank-error', this._bankError);
      this._bankInfo.append(err);
    }
    this._bankOpen.style.display = b && !open && b.magics !== false ? '' : 'none';
    this._bankForm.style.display = open ? '' : 'none';
    this._bankHitsBox.textContent = '';
    if (open && this._bankHits !== null) {
      this._bankHitsBox.append(el('div', 'ryz-label', `Most similar to “${this._bankQuery}”`));
      if (!this._bankHits.length) {
        this._bankHitsBox.append(el('div', 'ryz-empty', 'No units in the bank.'));
      }
      for (const h of this._bankHits) {
        this._bankHitsBox.append(this._unitRow(h, true));
      }
    }
    this._bankUnitsBox.textContent = '';
    if (open) {
      this._bankUnitsBox.append(el('div', 'ryz-label', 'Newest units'));
      if (!this._bankUnits.length) {
        this._bankUnitsBox.append(
          el('div', 'ryz-empty', 'The bank is empty. bank.add(text), or %config RyzMagics.recycle = True.')
        );
      }
      for (const u of this._bankUnits) {
        this._bankUnitsBox.append(this._unitRow(u, false));
      }
    }
  }

  dispose(): void {
    if (this._link) {
      this._link.dispose();
      this._link = null;
    }
    super.dispose();
  }

  private _options: IPanelOptions;
  private _notebook: NotebookPanel | null = null;
  private _link: KernelLink | null = null;
  private _lastLinkState: LinkState | null = null;
  private _models: IModelRow[] = [];
  private _state: any = null;
  private _live: any = null;
  private _last: any = null;
  private _server: any = null;
  private _progress: any = null;
  private _spark: number[] = [];
  private _error = '';
  private _pendingOp = '';
  private _refreshTimer = 0;
  private _connections = 0;
  private _restarts = 0;
  private _kernelBadge: HTMLSpanElement;
  private _notebookLabel: HTMLDivElement;
  private _stateBox: HTMLDivElement;
  private _errorBox: HTMLDivElement;
  private _body: HTMLDivElement;
  private _bank: any = null;
  private _bankUnits: IUnit[] = [];
  private _bankHits: IUnit[] | null = null;
  private _bankQuery = '';
  private _bankError = '';
  private _bankPending = '';
  private _bankTimer = 0;
  private _bankBox: HTMLDivElement;
  private _bankInfo!: HTMLDivElement;
  private _bankOpen!: HTMLButtonElement;
  private _bankForm!: HTMLFormElement;
  private _bankSearch!: HTMLInputElement;
  private _bankHitsBox!: HTMLDivElement;
  private _bankUnitsBox!: HTMLDivElement;
}
