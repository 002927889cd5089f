import type { Server } from 'bun'
import type { Socket } from './connection.ts'

/**
 * Moves a serialised frame to the sockets subscribed to a topic. In-process
 * Bun topics now; a multi-instance broker (Redis) would implement the same
 * surface.
 */
export interface FanoutBroker {
  subscribe(socket: Socket, topic: string): void
  unsubscribe(socket: Socket, topic: string): void
  /**
   * Sends `frame` to every subscriber of each topic except `exclude`, and
   * returns how many sockets it was sent to. The hub keeps each socket in at
   * most one of the topics of one publish, so nobody gets it twice.
   */
  publish(topics: readonly string[], frame: string, exclude?: readonly Socket[]): number
}

export class BunTopicBroker implements FanoutBroker {
  constructor(private readonly server: Server<unknown>) {}

  subscribe(socket: Socket, topic: string): void {
    socket.subscribe(topic)
  }

  unsubscribe(socket: Socket, topic: string): void {
    socket.unsubscribe(topic)
  }

  publish(topics: readonly string[], frame: string, exclude?: readonly Socket[]): number {
    if (exclude === undefined || exclude.length === 0) return this.publishAll(topics, frame)
    // Excluded sockets leave the topics for the duration of this synchronous
    // publish: nothing else can run in between.
    const removed: Array<[Socket, string]> = []
    for (const socket of exclude)
      for (const topic of topics)
        if (socket.isSubscribed(topic)) {
          socket.unsubscribe(topic)
          removed.push([socket, topic])
        }
    const delivered = this.publishAll(topics, frame)
    for (const [socket, topic] of removed) socket.subscribe(topic)
    return delivered
  }

  private publishAll(topics: readonly string[], frame: string): number {
    let delivered = 0
    for (const topic of topics) {
      const count = this.server.subscriberCount(topic)
      if (count === 0) continue
      this.server.publish(topic, frame)
      delivered += count
    }
    return delivered
  }
}
