/** A listener of one event type. */
export type Listener<T> = (event: T) => void

/**
 * A minimal typed event emitter: `on` returns the function that removes the
 * listener. A throwing listener is reported, never allowed to break the
 * client's own bookkeeping.
 */
export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>()

  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(type)
    if (!set) {
      set = new Set()
      this.listeners.set(type, set)
    }
    set.add(listener as Listener<never>)
    return () => this.off(type, listener)
  }

  /** Resolves with the next event of this type. */
  once<K extends keyof Events>(type: K): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(type, (event) => {
        off()
        resolve(event)
      })
    })
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.listeners.get(type)?.delete(listener as Listener<never>)
  }

  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const set = this.listeners.get(type)
    if (!set) return
    for (const listener of [...set]) {
      try {
        ;(listener as Listener<Events[K]>)(event)
      } catch (error) {
        // A listener's bug must not stop the others or corrupt our state.
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }
}
