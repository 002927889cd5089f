/**
 * The admin dashboard: one self-contained page (no build step, no CDN), which
 * polls /admin/data every second with the token it was opened with, and
 * /api/ws/intake when the intake queue is on (a 404 there: off, the section
 * stays hidden and is not asked again).
 */
export const adminPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>teable-realtime · admin</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f5f6f8; }
  body { margin: 0; padding: 24px; }
  h1 { font-size: 20px; margin: 0 0 16px; }
  .cards { display: flex; gap: 12px; flex-wrap: wrap; margin-bottom: 16px; }
  .card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 140px; box-shadow: 0 1px 2px #0002; }
  .card b { display: block; font-size: 28px; }
  .card span { color: #667; font-size: 13px; }
  section { background: #fff; border-radius: 8px; padding: 12px 16px; margin-bottom: 16px; box-shadow: 0 1px 2px #0002; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 14px; }
  td, th { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; }
  canvas { width: 100%; height: 180px; }
  #status, #intake-status { color: #667; font-size: 13px; font-weight: normal; }
  .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
</style>
</head>
<body>
<h1>teable-realtime</h1>
<div class="cards">
  <div class="card"><b id="connections">–</b><span>connections</span></div>
  <div class="card"><b id="users">–</b><span>users online</span></div>
  <div class="card"><b id="channels">–</b><span>channels</span></div>
  <div class="card"><b id="subscriptions">–</b><span>subscriptions</span></div>
  <div class="card"><b id="rate">–</b><span>messages out / s</span></div>
</div>
<section>
  <h2>Messages per second, last 5 minutes <span id="status"></span></h2>
  <canvas id="chart" width="1200" height="180"></canvas>
</section>
<section id="intake" hidden>
  <h2>Intake queue <span id="intake-status"></span></h2>
  <table><thead><tr><th>stream</th><th>group</th><th>length</th><th>pending</th><th>dead letters</th><th>lag</th><th>this process</th><th>processed</th><th>retried</th><th>dead-lettered</th></tr></thead>
  <tbody><tr><td id="intake-stream"></td><td id="intake-group"></td><td id="intake-length"></td><td id="intake-pending"></td><td id="intake-dead"></td><td id="intake-lag"></td><td id="intake-node"></td><td id="intake-processed"></td><td id="intake-retried"></td><td id="intake-dead-lettered"></td></tr></tbody></table>
</section>
<div class="grid">
  <section><h2>Busiest channels</h2><table><thead><tr><th>channel</th><th>subscribers</th></tr></thead><tbody id="busiest"></tbody></table></section>
  <section><h2>Online users</h2><table><thead><tr><th>user</th><th>connections</th></tr></thead><tbody id="online"></tbody></table></section>
</div>
<script>
  const token = new URLSearchParams(location.search).get('token')
  const headers = token ? { Authorization: 'Bearer ' + token } : {}
  const $ = (id) => document.getElementById(id)
  const rows = (items, cells) => items.map((item) => '<tr>' + cells(item).map((c) => '<td>' + String(c).replace(/[&<>]/g, (x) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[x]) + '</td>').join('') + '</tr>').join('')
  function draw(series) {
    const canvas = $('chart'); const ctx = canvas.getContext('2d')
    const w = canvas.width, h = canvas.height, pad = 24
    ctx.clearRect(0, 0, w, h)
    const max = Math.max(1, ...series.map((s) => Math.max(s.in, s.out)))
    ctx.fillStyle = '#667'; ctx.font = '12px system-ui'; ctx.fillText(max + '/s', 4, 12)
    ctx.strokeStyle = '#eee'; ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w, h - pad); ctx.stroke()
    // One pair of bars per second: out (blue) and in (orange), newest on the right.
    const slot = (w - pad) / 300
    const y = (v) => ((h - 2 * pad) * v) / max
    const offset = 300 - series.length
    series.forEach((s, i) => {
      const left = pad + (i + offset) * slot
      ctx.fillStyle = '#2f6fed'; ctx.fillRect(left, h - pad - y(s.out), Math.max(1, slot / 2), y(s.out))
      ctx.fillStyle = '#e8833a'; ctx.fillRect(left + slot / 2, h - pad - y(s.in), Math.max(1, slot / 2), y(s.in))
    })
    canvas.dataset.points = String(series.length)
    canvas.dataset.totalOut = String(series.reduce((sum, s) => sum + s.out, 0))
  }
  async function refresh() {
    try {
      const response = await fetch('/admin/data', { headers })
      if (!response.ok) throw new Error('HTTP ' + response.status)
      const data = await response.json()
      for (const key of ['connections', 'users', 'channels', 'subscriptions']) $(key).textContent = data[key]
      const last = data.throughput[data.throughput.length - 1]
      $('rate').textContent = last ? last.out : 0
      $('busiest').innerHTML = rows(data.busiest, (c) => [c.channel, c.subscribers])
      $('online').innerHTML = rows(data.online, (u) => [u.user_id, u.connections])
      draw(data.throughput)
      $('status').textContent = '· updated ' + new Date().toLocaleTimeString()
    } catch (error) {
      $('status').textContent = '· ' + error.message
    }
  }
  let intakeOn = true
  async function refreshIntake() {
    try {
      const response = await fetch('/api/ws/intake', { headers })
      // Not mounted: INTAKE_STREAM is unset, which only a restart changes.
      if (response.status === 404) { intakeOn = false; return }
      $('intake').hidden = false
      if (!response.ok) throw new Error('HTTP ' + response.status)
      const q = await response.json()
      for (const key of ['stream', 'group', 'length', 'pending', 'dead', 'lag']) $('intake-' + key).textContent = q[key]
      $('intake-node').textContent = q.process.node_id + (q.process.consuming ? ' (consuming)' : ' (standing by)')
      $('intake-processed').textContent = q.process.processed
      $('intake-retried').textContent = q.process.retried
      $('intake-dead-lettered').textContent = q.process.dead_lettered
      $('intake-status').textContent = '· updated ' + new Date().toLocaleTimeString()
    } catch (error) {
      $('intake-status').textContent = '· ' + error.message
    }
  }
  function tick() {
    refresh()
    if (intakeOn) refreshIntake()
  }
  tick()
  setInterval(tick, 1000)
</script>
</body>
</html>
`
