// The presence board: watch up to 650 users live over presenced's watch stream (docs/streams.md)
// and ask the server why one of them shows what they show (docs/client-sessions.md, explain).
//
// No dependencies and no build step. The token lives in this module's memory only: it travels in
// the WebSocket's first message and in the Authorization header of explain requests, never in a
// URL, a cookie or storage. Everything the server sends is put on the page as text, never markup.

const MAX_IDS = 650;
const STREAM_PATH = '/v1.0/communications/presences/$stream';
// Reconnect backoff after a dropped socket: doubling from the first delay up to the last, with
// jitter so that many boards do not come back at the same instant after a server restart.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;
// A socket that stayed open this long was healthy: the next drop starts the backoff over.
const HEALTHY_AFTER_MS = 30000;

// Availability -> indicator colour (board.css).
const TONES = {
  Available: 'available',
  AvailableIdle: 'away',
  Away: 'away',
  BeRightBack: 'away',
  Busy: 'busy',
  BusyIdle: 'busy',
  DoNotDisturb: 'dnd',
  Offline: 'offline',
  PresenceUnknown: 'offline',
};

// A watch the server refused with one of these will be refused again: stop rather than retry.
// (TooManyRequests and ServiceNotAvailable are retried with the backoff.)
const FINAL_ERRORS = new Set(['InvalidAuthenticationToken', 'Forbidden', 'InvalidArgument', 'BadRequest']);

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('watch-form'),
  token: $('token'),
  ids: $('ids'),
  watch: $('watch'),
  stop: $('stop'),
  status: $('status'),
  error: $('error'),
  board: $('board'),
  card: $('card'),
  explain: $('explain'),
  explainTitle: $('explain-title'),
  explainBody: $('explain-body'),
  explainClose: $('explain-close'),
};

// The current watch: {token, ids, cards, resume, socket, attempts, retryTimer, openedAt}.
let current = null;
// Bumped per explain request, so a slow answer never replaces a newer one.
let explainSeq = 0;

// ---- ids --------------------------------------------------------------------------------------

// The server stores GUIDs lower-case and other ids as given (presence-core ids.rs); so do we.
const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const keyOf = (id) => (GUID.test(id) ? id.toLowerCase() : id);

function parseIds(text) {
  const seen = new Set();
  const ids = [];
  for (const raw of text.split(/[\s,;]+/)) {
    const id = keyOf(raw.trim());
    if (id && !seen.has(id)) {
      seen.add(id);
      ids.push(id);
    }
  }
  return ids;
}

// ---- status and errors ------------------------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = '';
  ui.error.hidden = true;
}

// A Graph error ({"error":{"code","message"}}) in words, with the HTTP status when there is one.
function describeError(error, status) {
  const code = error?.code ?? 'Error';
  const message = error?.message ?? 'The server gave no reason.';
  const hint = {
    InvalidAuthenticationToken: ' Check the token: paste a fresh one.',
    Forbidden: ' The token lacks the permission (watching others needs Presence.Read.All).',
  }[code] ?? '';
  return `${status ? `${status} ` : ''}${code}: ${message}${hint}`;
}

// ---- the board ------------------------------------------------------------------------------

function renderCards(ids) {
  const cards = new Map();
  const items = ids.map((id) => {
    const li = ui.card.content.firstElementChild.cloneNode(true);
    li.dataset.id = id;
    li.dataset.tone = 'pending';
    li.querySelector('.who').textContent = id;
    li.querySelector('.who').title = id;
    li.querySelector('.availability').textContent = 'Waiting';
    li.querySelector('.activity').textContent = '…';
    cards.set(id, li);
    return li;
  });
  ui.board.replaceChildren(...items);
  return cards;
}

// Show one presence (Graph's presence resource), unless the card already shows a newer one:
// sequence numbers only grow per user and sort as strings (20 digits).
function applyPresence(watch, presence) {
  const li = watch.cards.get(keyOf(presence.id ?? ''));
  if (!li) return;
  const seq = presence.sequenceNumber ?? '';
  if (li.dataset.seq && seq && seq < li.dataset.seq) return;
  li.dataset.seq = seq;
  const availability = presence.availability ?? 'PresenceUnknown';
  li.dataset.availability = availability;
  li.dataset.tone = TONES[availability] ?? 'offline';
  li.querySelector('.availability').textContent = availability;
  li.querySelector('.activity').textContent = presence.activity ?? '';
  const notes = [];
  if (presence.outOfOfficeSettings?.isOutOfOffice) notes.push('Out of office');
  const message = presence.statusMessage?.message?.content;
  if (message) notes.push(message);
  li.querySelector('.note').textContent = notes.join(' · ');
}

// A reset snapshot replaces what the board had: every card waits for its presence again.
function resetCards(watch) {
  for (const li of watch.cards.values()) {
    delete li.dataset.seq;
    delete li.dataset.availability;
    li.dataset.tone = 'pending';
    li.querySelector('.availability').textContent = 'Waiting';
    li.querySelector('.activity').textContent = '…';
    li.querySelector('.note').textContent = '';
  }
}

// ---- the stream -------------------------------------------------------------------------------

function streamUrl() {
  const url = new URL(STREAM_PATH, window.location.href);
  url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

function connect(watch) {
  setStatus('connecting', watch.resume ? 'Reconnecting…' : 'Connecting…');
  const socket = new WebSocket(streamUrl());
  watch.socket = socket;
  // Set when a snapshot in parts ("more": true) is under way, so only its first part resets.
  let inSnapshot = false;

  socket.addEventListener('open', () => {
    watch.openedAt = Date.now();
    const first = { type: 'watch', token: watch.token, ids: watch.ids };
    if (watch.resume) first.resume = watch.resume;
    socket.send(JSON.stringify(first));
    setStatus('live', `Live · ${watch.ids.length} user${watch.ids.length === 1 ? '' : 's'}`);
  });

  socket.addEventListener('message', (event) => {
    if (watch !== current) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    switch (message.type) {
      case 'snapshot':
        if (message.reset && !inSnapshot) resetCards(watch);
        inSnapshot = Boolean(message.more);
        for (const presence of message.value ?? []) applyPresence(watch, presence);
        if (message.resume) watch.resume = message.resume;
        watch.attempts = 0;
        clearError();
        break;
      case 'presence':
        applyPresence(watch, message.presence ?? {});
        if (message.resume) watch.resume = message.resume;
        watch.attempts = 0;
        break;
      case 'end':
        watch.ended = message.reason;
        break;
      case 'error':
        watch.refused = message.error ?? {};
        break;
      default:
        break;
    }
  });

  socket.addEventListener('close', () => {
    if (watch !== current || watch.socket !== socket) return;
    watch.socket = null;
    const { ended, refused } = watch;
    watch.ended = watch.refused = undefined;
    if (ended === 'tokenExpired') {
      finish('The token expired. Paste a new one and press Watch; the board picks up where it was.');
      keepResumeFor(watch);
      return;
    }
    if (refused && FINAL_ERRORS.has(refused.code)) {
      finish(describeError(refused));
      return;
    }
    if (refused) showError(describeError(refused));
    if (watch.openedAt && Date.now() - watch.openedAt > HEALTHY_AFTER_MS) watch.attempts = 0;
    watch.openedAt = 0;
    const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** watch.attempts) * (0.75 + Math.random() / 2);
    watch.attempts += 1;
    const why = ended === 'shutdown' ? 'Server restarting' : 'Connection lost';
    setStatus('connecting', `${why}; reconnecting in ${Math.round(delay / 1000)} s…`);
    watch.retryTimer = window.setTimeout(() => {
      if (watch === current) connect(watch);
    }, delay);
  });
}

// After an expired token the same ids may be watched again with a new token: keep the resume
// token so that the stream sends only what was missed.
let carriedResume = null;
function keepResumeFor(watch) {
  carriedResume = { ids: watch.ids.join(','), resume: watch.resume };
}

// The watch ends for good (until Watch is pressed again).
function finish(errorText) {
  stopWatch();
  setStatus('failed', 'Stopped');
  showError(errorText);
}

function stopWatch() {
  const watch = current;
  current = null;
  ui.stop.disabled = true;
  if (!watch) return;
  window.clearTimeout(watch.retryTimer);
  if (watch.socket) watch.socket.close(1000, 'stopped');
  watch.socket = null;
}

function startWatch(event) {
  event.preventDefault();
  clearError();
  const token = ui.token.value.trim().replace(/^Bearer\s+/i, '');
  const ids = parseIds(ui.ids.value);
  if (!token) return showError('Paste a bearer token first.');
  if (ids.length === 0) return showError('Enter at least one user id.');
  if (ids.length > MAX_IDS) return showError(`At most ${MAX_IDS} users can be watched at once (got ${ids.length}).`);
  stopWatch();
  closeExplain();
  const same = carriedResume && carriedResume.ids === ids.join(',');
  const watch = {
    token,
    ids,
    cards: null,
    resume: same ? carriedResume.resume : null,
    socket: null,
    attempts: 0,
    retryTimer: 0,
    openedAt: 0,
  };
  carriedResume = null;
  // Resuming the same ids keeps the cards as they were; the stream sends what they missed.
  watch.cards = same && ui.board.children.length === ids.length ? cardsOnPage() : renderCards(ids);
  current = watch;
  ui.stop.disabled = false;
  connect(watch);
}

function cardsOnPage() {
  return new Map([...ui.board.children].map((li) => [li.dataset.id, li]));
}

// ---- explain ----------------------------------------------------------------------------------

function closeExplain() {
  explainSeq += 1;
  ui.explain.hidden = true;
  ui.explainBody.replaceChildren();
  for (const li of ui.board.querySelectorAll('.card.selected')) li.classList.remove('selected');
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// "2026-12-05T10:00:00.0000000Z" (Graph's seven fraction digits) as local time, or a dash.
function when(text) {
  if (!text) return '—';
  const date = new Date(text.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

function definitions(pairs) {
  const dl = el('dl');
  for (const [term, value] of pairs) {
    if (value === undefined || value === null) continue;
    dl.append(el('dt', '', term), el('dd', '', String(value)));
  }
  return dl;
}

function renderExplanation(x) {
  const rule = el('p', 'rule');
  rule.append('Rule ', el('code', '', x.rule), `: ${x.reason}`);
  const parts = [definitions([['Shows', `${x.availability} · ${x.activity}`]]), rule];
  if (x.preferred) {
    parts.push(
      definitions([
        ['Preferred', `${x.preferred.availability} · ${x.preferred.activity}`],
        ['until', when(x.preferred.expiresAt)],
      ]),
    );
  }
  if (!x.sessions?.length) parts.push(el('p', '', 'No live session.'));
  for (const s of x.sessions ?? []) {
    const box = el('section', `session${s.id === x.decidingSessionId ? ' deciding' : ''}`);
    box.append(
      el('h3', '', s.id),
      definitions([
        ['Kind', s.kind],
        ['Application', s.applicationId],
        ['Device', s.device],
        ['Connected', s.connected === undefined || s.connected === null ? null : s.connected ? 'yes' : 'no'],
        ['Set to', `${s.availability} · ${s.activity}`],
        ['Stage', `${s.stage} → ${s.effectiveAvailability} · ${s.effectiveActivity}`],
        ['Set at', when(s.setAt)],
        ['Idle at', when(s.idleAt)],
        ['Away at', when(s.awayAt)],
        ['Expires', s.expiresAt ? when(s.expiresAt) : 'while connected'],
      ]),
    );
    parts.push(box);
  }
  parts.push(el('p', 'evaluated', `Evaluated ${when(x.evaluatedAt)}`));
  ui.explainBody.replaceChildren(...parts);
}

async function explain(li) {
  const watch = current;
  if (!watch) return;
  const id = li.dataset.id;
  const seq = ++explainSeq;
  for (const other of ui.board.querySelectorAll('.card.selected')) other.classList.remove('selected');
  li.classList.add('selected');
  ui.explain.hidden = false;
  ui.explainTitle.textContent = id;
  ui.explainBody.replaceChildren(el('p', '', 'Asking the server…'));
  let text;
  try {
    const response = await fetch(`/v1.0/users/${encodeURIComponent(id)}/presence/explain`, {
      headers: { Authorization: `Bearer ${watch.token}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    const body = await response.json().catch(() => null);
    if (seq !== explainSeq) return;
    if (response.ok && body) {
      renderExplanation(body);
      return;
    }
    text = describeError(body?.error, response.status);
  } catch (error) {
    if (seq !== explainSeq) return;
    text = `The server could not be reached (${error.message}).`;
  }
  ui.explainBody.replaceChildren(el('p', 'error', text));
}

// ---- wiring -----------------------------------------------------------------------------------

ui.form.addEventListener('submit', startWatch);
ui.stop.addEventListener('click', () => {
  stopWatch();
  setStatus('idle', 'Not watching');
});
ui.explainClose.addEventListener('click', closeExplain);
ui.board.addEventListener('click', (event) => {
  const li = event.target.closest('.card');
  if (li) explain(li);
});
ui.board.addEventListener('keydown', (event) => {
  const li = event.target.closest('.card');
  if (li && (event.key === 'Enter' || event.key === ' ')) {
    event.preventDefault();
    explain(li);
  }
});
