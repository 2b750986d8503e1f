"""The labelling page: one self-contained HTML document (no external files, no network).

Keys: ``g`` good, ``1``..``9`` the listed defect classes, ``n`` a new class (type, Enter),
``o`` anomaly-map overlay on/off, ``s`` / right arrow skip, ``Esc`` cancel a new class.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LineGuard labelling</title>
<style>
 body{font-family:sans-serif;margin:0;background:#111;color:#eee;display:flex;height:100vh}
 #left{flex:1;display:flex;align-items:center;justify-content:center;background:#000}
 #frame{max-width:100%;max-height:100vh;image-rendering:pixelated}
 #right{width:330px;padding:12px;overflow:auto}
 .k{display:inline-block;min-width:1.4em;padding:1px 4px;border:1px solid #888;border-radius:3px;text-align:center}
 .v-reject{color:#f66}.v-accept{color:#6f6}.v-recheck{color:#fc3}
 #newclass{display:none;margin-top:8px}#msg{color:#fc3;min-height:1.2em}
 td{padding:1px 6px}
</style></head>
<body><div id="left"><img id="frame" alt="frame"></div>
<div id="right">
 <h3>LineGuard labelling</h3>
 <div id="progress"></div><div id="msg"></div>
 <table>
  <tr><td>verdict</td><td id="verdict"></td></tr>
  <tr><td>score</td><td id="score"></td></tr>
  <tr><td>thresholds</td><td id="thresholds"></td></tr>
  <tr><td>class</td><td id="dclass"></td></tr>
  <tr><td>why queued</td><td id="why"></td></tr>
  <tr><td>bundle</td><td id="bundle"></td></tr>
  <tr><td>camera</td><td id="camera"></td></tr>
 </table>
 <p><span class="k">g</span> good &nbsp; <span class="k">n</span> new class &nbsp; <span class="k">o</span> overlay
  &nbsp; <span class="k">s</span> skip</p>
 <div id="classes"></div>
 <div id="newclass"><input id="newname" placeholder="new class name" autocomplete="off"></div>
</div>
<script>
let frames = [], classes = [], overlay = true, skipped = new Set(), busy = false;
const $ = id => document.getElementById(id);
function current() { return frames.find(f => !skipped.has(f.message_id)); }
async function load() {
  const r = await fetch('/api/queue'); const q = await r.json();
  frames = q.frames; classes = q.classes;
  $('progress').textContent = `shift ${q.shift}: ${q.labelled_this_shift} labelled, budget ${q.budget}, ` +
    `${q.unlabelled} waiting`;
  show();
}
function show() {
  const f = current();
  $('classes').innerHTML = classes.slice(0, 9)
    .map((c, i) => `<div><span class="k">${i + 1}</span> ${c}</div>`).join('');
  if (!f) { $('frame').removeAttribute('src'); $('verdict').textContent = 'queue empty';
    document.body.dataset.current = ''; return; }
  document.body.dataset.current = f.message_id;
  $('frame').src = `/api/image/${f.message_id}?overlay=${overlay && f.has_map ? 1 : 0}`;
  $('verdict').textContent = f.verdict; $('verdict').className = 'v-' + f.verdict;
  $('score').textContent = f.anomaly_score === null ? 'n/a' : f.anomaly_score.toFixed(4);
  $('thresholds').textContent = f.lower === null ? 'n/a'
    : `accept < ${f.lower.toFixed(4)}, reject >= ${f.upper.toFixed(4)}`;
  // an unknown defect or a recheck still shows the classifier's best guess and its confidence
  const pct = f.class_confidence === null ? '' : ` ${(100 * f.class_confidence).toFixed(0)}%`;
  $('dclass').textContent = !f.defect_class ? '-'
    : f.defect_class === 'unknown' && f.class_guess ? `unknown (best guess: ${f.class_guess}${pct})`
    : f.defect_class + (pct ? ` (${pct.trim()})` : '');
  $('why').textContent = (f.selected ? `selected: ${f.selected} #${f.rank + 1}` : f.kind)
    + `, info ${f.informativeness.toFixed(2)}`;
  $('bundle').textContent = f.bundle_id; $('camera').textContent = f.camera_id;
}
async function label(name) {
  const f = current(); if (!f || busy) return; busy = true;
  try {
    const r = await fetch('/api/label', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({message_id: f.message_id, label: name})});
    const body = await r.json();
    if (!r.ok) { $('msg').textContent = body.error; return; }
    $('msg').textContent = `${f.message_id.slice(0, 8)}: ${name}`;
    document.body.dataset.lastEvent = body.event_id;
    if (name !== 'good' && !classes.includes(name)) classes.push(name);
    frames = frames.filter(x => x.message_id !== f.message_id);
    if (!current()) await load(); else show();
  } finally { busy = false; }
}
document.addEventListener('keydown', e => {
  if ($('newclass').style.display === 'block') {
    if (e.key === 'Enter') { const v = $('newname').value.trim(); $('newclass').style.display = 'none';
      $('newname').value = ''; if (v) label(v); }
    if (e.key === 'Escape') { $('newclass').style.display = 'none'; }
    return;
  }
  if (e.key === 'g') label('good');
  else if (e.key >= '1' && e.key <= '9' && classes[+e.key - 1]) label(classes[+e.key - 1]);
  else if (e.key === 'n') { e.preventDefault(); $('newclass').style.display = 'block'; $('newname').focus(); }
  else if (e.key === 'o') { overlay = !overlay; show(); }
  else if (e.key === 's' || e.key === 'ArrowRight') { const f = current(); if (f) skipped.add(f.message_id); show(); }
});
load();
</script></body></html>
"""
