// The todos page: live values over server-sent events, changes through commands.
'use strict';

const $ = (id) => document.getElementById(id);
const owner = () => $('owner').value;
// Absolute epoch milliseconds with sub-millisecond precision, comparable across pages.
const now = () => performance.timeOrigin + performance.now();

// ---- live values ----

let sources = [];
let lastView = null;

// Opens the live stream of `method` for the current owner; `show` gets each value.
function live(method, show) {
  const url = '/live/' + method + '?args=' + encodeURIComponent(JSON.stringify([owner()]));
  const source = new EventSource(url);
  const frame = (event) => {
    $('last-frame').textContent = method + ' ' + event.lastEventId;
    show(JSON.parse(event.data));
  };
  source.addEventListener('init', frame);
  source.addEventListener('update', frame);
  source.addEventListener('error', (event) => {
    if (event.data) showMessage(method + ': ' + event.data); // an `error` frame from the server
  });
  sources.push(source);
}

function connect() {
  sources.forEach((source) => source.close());
  sources = [];
  lastView = null;
  live('view', showView);
  live('open_count', (value) => { $('open-count').textContent = unwrap(value); });
  live('figures', (value) => {
    const f = unwrap(value);
    $('figures').textContent = typeof f === 'object'
      ? `${f.added} added, ${f.completed} completed, ${f.removed} removed (stream position ${f.position})`
      : f;
  });
}

// The connection state: open when every stream is.
setInterval(showState, 250);
function showState() {
  const states = sources.map((source) => source.readyState);
  const state = states.every((s) => s === EventSource.OPEN) ? 'open'
    : states.some((s) => s === EventSource.CLOSED) ? 'closed' : 'connecting';
  $('state').textContent = state;
  $('state').className = state;
}

// A compute method's `Result` arrives as {"Ok": value} or {"Err": message}.
function unwrap(value) {
  if (value && 'Ok' in value) return value.Ok;
  return 'error: ' + (value && value.Err);
}

function showView(value) {
  if (!('Ok' in value)) { showMessage('view: ' + value.Err); return; }
  const text = JSON.stringify(value.Ok);
  if (text === lastView) return;
  lastView = text;
  const list = $('todos');
  list.replaceChildren(...value.Ok.map(item));
  document.body.dataset.lastUpdateAt = String(now());
}

function item(todo) {
  const li = document.createElement('li');
  li.dataset.id = todo.id;
  li.dataset.title = todo.title;
  li.dataset.done = todo.done;
  const done = document.createElement('input');
  done.type = 'checkbox';
  done.className = 'complete';
  done.checked = todo.done;
  done.disabled = todo.done;
  done.title = 'complete';
  done.addEventListener('click', () => command('complete', { id: todo.id }));
  const title = document.createElement('span');
  title.className = 'title';
  title.textContent = todo.title;
  const rename = document.createElement('button');
  rename.className = 'rename';
  rename.textContent = 'rename';
  rename.addEventListener('click', () => {
    const name = prompt('New title', todo.title);
    if (name !== null) command('rename', { id: todo.id, title: name });
  });
  const remove = document.createElement('button');
  remove.className = 'remove';
  remove.textContent = 'remove';
  remove.addEventListener('click', () => command('remove', { id: todo.id }));
  li.append(done, title, rename, remove);
  return li;
}

// ---- commands ----

async function command(name, body) {
  document.body.dataset.lastClickAt = String(now());
  showMessage('');
  const response = await fetch('/commands/todos.' + name, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  document.body.dataset.lastAnswerAt = String(now());
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) showMessage(answer.message || response.statusText);
  // Nothing else to do: the live streams bring the change, here and on every other host.
}

function showMessage(text) { $('message').textContent = text; }

$('add-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const title = $('new-title').value;
  $('new-title').value = '';
  command('add', { owner: owner(), title });
});
$('owner').addEventListener('change', connect);
connect();
