/** A small SVG line chart (no dependencies): two panels sharing a log-scale x axis. */

export interface Series {
  name: string
  color: string
  dashed?: boolean
  points: Array<[number, number]>
}

export interface Panel {
  title: string
  unit: string
  series: Series[]
}

const W = 420
const H = 260
const M = { left: 64, right: 16, top: 28, bottom: 40 }

function panel(p: Panel, dx: number, xs: number[]): string {
  const xMin = Math.log10(Math.min(...xs))
  const xMax = Math.log10(Math.max(...xs))
  const yMax = Math.max(...p.series.flatMap((s) => s.points.map(([, y]) => y))) * 1.1 || 1
  const x = (v: number) =>
    dx + M.left + ((Math.log10(v) - xMin) / (xMax - xMin || 1)) * (W - M.left - M.right)
  const y = (v: number) => M.top + (1 - v / yMax) * (H - M.top - M.bottom)
  const out: string[] = []
  out.push(
    `<text x="${dx + W / 2}" y="16" text-anchor="middle" font-weight="bold">${p.title}</text>`,
  )
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i
    out.push(
      `<line x1="${dx + M.left}" x2="${dx + W - M.right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${dx + M.left - 6}" y="${y(v) + 4}" text-anchor="end">${v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(0)}k` : v.toFixed(0)}</text>`,
    )
  }
  for (const v of xs)
    out.push(
      `<line x1="${x(v)}" x2="${x(v)}" y1="${M.top}" y2="${H - M.bottom}" stroke="#eee"/>`,
      `<text x="${x(v)}" y="${H - M.bottom + 16}" text-anchor="middle">${v.toLocaleString('en-US')}</text>`,
    )
  out.push(
    `<text x="${dx + W / 2}" y="${H - 6}" text-anchor="middle">subscribers (log scale)</text>`,
  )
  out.push(
    `<text x="${dx + 14}" y="${H / 2}" text-anchor="middle" transform="rotate(-90 ${dx + 14} ${H / 2})">${p.unit}</text>`,
  )
  for (const s of p.series) {
    const d = s.points
      .map(([a, b], i) => `${i ? 'L' : 'M'}${x(a).toFixed(1)},${y(b).toFixed(1)}`)
      .join(' ')
    out.push(
      `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,4"' : ''}/>`,
    )
    for (const [a, b] of s.points)
      out.push(`<circle cx="${x(a)}" cy="${y(b)}" r="3" fill="${s.color}"/>`)
  }
  return out.join('\n')
}

export function chart(panels: Panel[], legend: Series[]): string {
  const xs = [
    ...new Set(panels.flatMap((p) => p.series.flatMap((s) => s.points.map(([a]) => a)))),
  ].sort((a, b) => a - b)
  const width = W * panels.length
  const height = H + 24
  const body = panels.map((p, i) => panel(p, i * W, xs)).join('\n')
  const keys = legend
    .map(
      (s, i) =>
        `<line x1="${20 + i * 200}" x2="${44 + i * 200}" y1="${H + 12}" y2="${H + 12}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,4"' : ''}/><text x="${50 + i * 200}" y="${H + 16}">${s.name}</text>`,
    )
    .join('\n')
  const title = panels.map((p) => p.title).join('; ')
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">
<title>${title} against subscribers</title>
<rect width="100%" height="100%" fill="white"/>
${body}
${keys}
</svg>
`
}
