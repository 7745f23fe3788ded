package sync

import (
	"cmp"
	"errors"
	"fmt"
	"runtime"
	"slices"
	stdsync "sync"

	"github.com/klauspost/compress/zstd"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/tree"
)

func (w *walk) deltas() bool { return w.s.welcome.Caps&capDelta != 0 && !w.s.NoDelta }

// sendData streams the lacking data blobs in the order of their packs here,
// so that reading them is sequential.
func (w *walk) sendData() error {
	slices.SortFunc(w.lacking, func(a, b index.Blob) int {
		if c := slices.Compare(a.Pack[:], b.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
	items := make([]item, len(w.lacking))
	for i, b := range w.lacking {
		items[i] = item{id: b.ID, loc: b.Location, located: true, pred: w.pred[b.ID]}
	}
	return w.sendAll(items)
}

// blobAt returns the data blob holding byte at of file n, or the zero ID.
func blobAt(n *tree.Node, at uint64) index.ID {
	var off uint64
	for _, e := range n.Content {
		if at < off+e.Length {
			return e.Blob
		}
		off += e.Length
	}
	return index.ID{}
}

// sendTrees sends the lacking trees, each after the lacking trees it names.
func (w *walk) sendTrees(root index.ID) error {
	if _, lacking := w.children[root]; !lacking {
		return nil
	}
	queued := make(map[index.ID]bool, len(w.children))
	var items []item
	// An explicit stack: trees may nest deeper than a goroutine stack likes.
	type frame struct {
		id   index.ID
		next int
	}
	stack := []frame{{id: root}}
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		kids := w.children[top.id]
		if top.next < len(kids) {
			kid := kids[top.next]
			top.next++
			if _, lacking := w.children[kid]; lacking && !queued[kid] {
				stack = append(stack, frame{id: kid})
			}
			continue
		}
		id := top.id
		stack = stack[:len(stack)-1]
		if !queued[id] {
			queued[id] = true
			items = append(items, item{id: id, pred: w.pred[id]})
		}
	}
	return w.sendAll(items)
}

// item is a blob to send: its location here if known, and its predecessor
// on the standby if it has one.
type item struct {
	id      index.ID
	loc     index.Location
	located bool
	pred    index.ID
}

// prepared is an item made ready for the wire by a worker.
type prepared struct {
	it    item
	frame []byte // the whole frame
	typ   index.BlobType
	delta bool
	raw   int64 // uncompressed size
	saved int64 // stored size minus the delta's, for a delta
	err   error
	done  chan struct{}
}

// sendAll sends items in order. Reading them, and encoding deltas, happen
// on one worker per core ahead of the writer, within a bounded window.
func (w *walk) sendAll(items []item) error {
	n := runtime.GOMAXPROCS(0)
	deltas := w.deltas()
	jobs := make(chan *prepared, 4*n)
	order := make(chan *prepared, 4*n)
	stop := make(chan struct{})
	go func() {
		defer close(order)
		defer close(jobs)
		for _, it := range items {
			p := &prepared{it: it, done: make(chan struct{})}
			select {
			case order <- p:
			case <-stop:
				return
			}
			select {
			case jobs <- p:
			case <-stop:
				p.err = errStopped
				close(p.done)
				return
			}
		}
	}()
	var workers stdsync.WaitGroup
	for range n {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var enc *zstd.Encoder
			defer func() {
				if enc != nil {
					enc.Close()
				}
			}()
			for p := range jobs {
				select {
				case <-stop:
					p.err = errStopped
				default:
					p.err = w.prepare(p, deltas, &enc)
				}
				close(p.done)
			}
		}()
	}
	var err error
	for p := range order {
		<-p.done
		if err == nil {
			err = p.err
		}
		if err == nil {
			err = w.write(p)
		}
		if err != nil {
			break
		}
	}
	close(stop)
	for range order {
	}
	workers.Wait()
	return err
}

var errStopped = errors.New("stopped")

// prepare reads an item and builds its frame: a Delta if it has a
// predecessor and the delta is at least an eighth smaller than the blob as
// stored, else a Blob.
func (w *walk) prepare(p *prepared, deltas bool, enc **zstd.Encoder) error {
	it := p.it
	if !it.located {
		loc, ok, err := w.src.Index().Lookup(it.id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("blob %s: %w in the source repository (run check)", it.id.Short(), chunkstore.ErrBlobMissing)
		}
		it.loc = loc
	}
	p.typ = it.loc.Type
	p.raw = int64(it.loc.RawLength)
	if deltas && !it.pred.IsZero() {
		ok, err := w.prepareDelta(p, it, enc)
		if err != nil || ok {
			return err
		}
	}
	const hdr = frameHeaderSize + maxBlobHeader
	buf := make([]byte, hdr+int(it.loc.Length))
	sb, err := w.src.ReadStored(it.id, it.loc, buf[hdr:])
	if err != nil {
		return err
	}
	h := appendFrameHeader(buf[:0], fBlob, maxBlobHeader+len(sb.Data))
	appendBlobHeader(h, sb)
	p.frame = buf
	return nil
}

func (w *walk) prepareDelta(p *prepared, it item, enc **zstd.Encoder) (bool, error) {
	raw, err := w.src.LoadBlob(it.id, nil)
	if err != nil {
		return false, err
	}
	base, err := w.src.LoadBlob(it.pred, nil)
	if err != nil {
		return false, nil // not readable here: send the blob itself
	}
	if *enc == nil {
		if *enc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
			zstd.WithWindowSize(chunkstore.MaxDataBlob)); err != nil {
			return false, err
		}
	}
	if err := (*enc).ResetWithOptions(nil, zstd.WithEncoderDictRaw(deltaDict, base)); err != nil {
		return false, err
	}
	const hdr = frameHeaderSize + deltaHeader
	buf := (*enc).EncodeAll(raw, make([]byte, hdr, hdr+len(raw)/8+64))
	d := len(buf) - hdr
	stored := uint64(it.loc.Length)
	if uint64(d) >= stored-stored/8 {
		return false, nil
	}
	h := appendFrameHeader(buf[:0], fDelta, deltaHeader+d)
	appendDeltaHeader(h, delta{Type: it.loc.Type, RawLength: uint32(len(raw)), ID: it.id, Base: it.pred})
	p.frame, p.delta, p.saved = buf, true, int64(stored)-int64(d)
	return true, nil
}

// write puts a prepared frame on the wire and counts it.
func (w *walk) write(p *prepared) error {
	if _, err := w.s.bw.Write(p.frame); err != nil {
		return w.s.writeErr(err)
	}
	if p.typ == index.DataBlob {
		w.st.DataSent++
	} else {
		w.st.TreesSent++
	}
	if p.delta {
		if p.typ == index.DataBlob {
			w.st.DeltasSent++
		} else {
			w.st.TreeDeltas++
		}
		w.st.DeltaSaved += p.saved
		w.st.BytesSent += int64(len(p.frame) - frameHeaderSize - deltaHeader)
	} else {
		w.st.BytesSent += int64(len(p.frame) - frameHeaderSize - maxBlobHeader)
	}
	w.st.RawSent += p.raw
	return nil
}
