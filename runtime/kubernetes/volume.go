package kubernetes

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/berthhq/berth/runtime"
)

// ClaimName is the PersistentVolumeClaim that holds key's volume.
func ClaimName(key string) string { return "berth-vol-" + keyHash(key) }

// claim makes sure key's claim exists and that no Pod that has not ended
// mounts it (of any Berth: the label selector has no instance), and returns
// its name. runtime.ErrVolumeBusy when one does.
func (r *Runtime) claim(ctx context.Context, key string) (string, error) {
	name := ClaimName(key)
	pvcs := r.cs.CoreV1().PersistentVolumeClaims(r.cfg.Namespace)
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{LabelManaged: "true", LabelKeyHash: keyHash(key)},
			Annotations: map[string]string{AnnotationKey: key},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(r.cfg.VolumeSize)}},
		},
	}
	if r.cfg.StorageClass != "" {
		pvc.Spec.StorageClassName = &r.cfg.StorageClass
	}
	if _, err := pvcs.Create(ctx, pvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create the volume's claim %s: %w", name, err)
	}
	sel := labels.SelectorFromSet(labels.Set{LabelVolume: name}).String()
	list, err := r.cs.CoreV1().Pods(r.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", fmt.Errorf("list the Pods of claim %s: %w", name, err)
	}
	for _, pod := range list.Items {
		if _, ended := podExit(&pod); !ended {
			return "", fmt.Errorf("%w: Pod %s still mounts claim %s", runtime.ErrVolumeBusy, pod.Name, name)
		}
	}
	return name, nil
}
